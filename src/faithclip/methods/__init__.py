"""Explanation methods, one module each; importing this package registers them in ``METHODS``."""

from importlib import import_module

from faithclip.registry import METHODS, load_plugins

# Each module registers its method on import; all of them ship with faithclip.
_MODULES = (
    "attention_eclip",
    "grad_eclip",
    "grad_eclip_official",
    "self_attention",
    "rollout",
    "game",
    "grad_cam",
    "legrad",
    "maskclip",
    "clip_surgery",
    "m2ib",
    "rise",
    "occlusion",
)

for _name in _MODULES:  # every one ships: a module that fails to import is a bug, raised, never skipped
    import_module(f"{__name__}.{_name}")

# Then the methods other packages register through the ``faithclip.methods`` entry points (docs/plugins.md).
load_plugins()

__all__ = ["METHODS"]
