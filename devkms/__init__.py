"""`kms-injector dev-server`: a local KMS speaking shared/kms-api.md over real HTTP.

In-process use (tests, demo)::

    from devkms import run_dev_kms, tiny_seed
    async with run_dev_kms(seed=tiny_seed(), token_ttl=2, max_ttl=5) as kms:
        kms.base_url            # "http://127.0.0.1:PORT/api"  (kms.root_url: without /api)
        kms.set_secret("test-proj", "prod", "/app", "API_KEY", "v2")
        await kms.stop(); await kms.start()   # outage on the same port

`profile=` (or `--profile`) models one real server: dev (default), infisical-recorded, hanzo-node,
infisical-events, canonical, canonical-older, canonical-nolist (profiles.py, docs/dev-server.md).

Test hooks (/api/_dev/...) are documented in devkms/api.py and docs/dev-server.md.
"""

from .api import build_app
from .audit import AuditLog
from .profiles import PROFILES, Profile, get_profile
from .seed import Seed, SeedError, load_seed, parse_seed, tiny_seed
from .server import DevKmsServer, run_dev_kms
from .model import Fault, KmsError
from .state import DevKms

__all__ = ["AuditLog", "DevKms", "DevKmsServer", "Fault", "KmsError", "PROFILES", "Profile", "Seed", "SeedError",
           "build_app", "get_profile", "load_seed", "parse_seed", "run_dev_kms", "tiny_seed"]
