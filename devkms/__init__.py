"""`kms-injector dev-server`: a local KMS speaking shared/kms-api.md over real HTTP.

In-process use (tests, demo)::

    from devkms import run_dev_kms, tiny_seed
    async with run_dev_kms(seed=tiny_seed(), token_ttl=2, max_ttl=5) as kms:
        kms.base_url            # "http://127.0.0.1:PORT/api"
        kms.set_secret("test-proj", "prod", "/app", "API_KEY", "v2")
        await kms.stop(); await kms.start()   # outage on the same port

Test hooks (/api/_dev/...) are documented in devkms/api.py and docs/dev-server.md.
"""

from .api import build_app
from .audit import AuditLog
from .seed import Seed, SeedError, load_seed, parse_seed, tiny_seed
from .server import DevKmsServer, run_dev_kms
from .state import DevKms, Fault, KmsError

__all__ = ["AuditLog", "DevKms", "DevKmsServer", "Fault", "KmsError", "Seed", "SeedError", "build_app",
           "load_seed", "parse_seed", "run_dev_kms", "tiny_seed"]
