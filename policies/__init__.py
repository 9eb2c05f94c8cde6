"""The built-in routing policies.

Each module is a first-party plugin: it is listed under the ``ead_sdk`` entry-point group in
``pyproject.toml`` and registers its policy through ``register_policies(register)``, exactly as
a third-party plugin does. Import the classes from here for type checks or subclassing.
"""
