"""Explanation methods, one module each; importing this package registers them in ``METHODS``."""

from importlib import import_module

from faithclip.registry import METHODS, load_plugins

# Each module registers its method on import. Modules listed here but not present are skipped, so
# that the registry holds exactly the methods that exist.
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

for _name in _MODULES:
    try:
        import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _error:
        if _error.name != f"{__name__}.{_name}":
            raise

# Then the methods other packages register through the ``faithclip.methods`` entry points (docs/plugins.md).
load_plugins()

__all__ = ["METHODS"]
