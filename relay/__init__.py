"""The change relay (`kms-injector relay`): watches each KMS folder once and tells the agents that
subscribed to it when it changed. No secret value ever passes through it (see relay/server.py)."""
