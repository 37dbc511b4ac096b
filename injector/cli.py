"""`kms-injector` console script: dispatch to a subcommand, importing only what it needs.

Imports are lazy so `kms-injector agent` starts without loading aiohttp or the webhook.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function, one-line help). Each function takes argv and returns an exit code.
COMMANDS = {
    "agent": ("injector.agent", "main", "run the in-pod agent (init or sidecar mode)"),
    "webhook": ("webhook.server", "main", "run the mutating admission webhook over HTTPS"),
    "inject": ("webhook.inject", "main", "mutate manifests offline, exactly as the webhook would"),
    "dev-server": ("devkms.cli", "main", "run a local KMS that speaks the KMS API"),
    "demo": ("devkms.demo", "main", "dev KMS + agent + example app: a rotation end to end"),
    "relay": ("relay.server", "main", "run the change relay: watch KMS folders once, notify subscribed agents"),
}


def usage() -> str:
    lines = ["usage: kms-injector COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `kms-injector COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"kms-injector: unknown command {name!r}; use one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing == module_name.split(".")[0] or missing == "injector":
            # The agent image carries only injector/: say so instead of a traceback.
            print(f"kms-injector: the {name!r} command is not in this installation ({missing}/ is not installed; "
                  f"the agent image carries only `kms-injector agent`); use the kms-injector-webhook image or "
                  f"`pip install 'kms-injector[webhook]'` from a full source tree", file=sys.stderr)
        else:
            print(f"kms-injector: the {name!r} command needs {missing!r}, which is not installed; "
                  f"install the webhook extra: pip install 'kms-injector[webhook]'", file=sys.stderr)
        return 2
    return int(getattr(module, func_name)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
