"""Call checking generated from the real TensorRT bindings' pybind11 signatures.

pybind11 writes every overload's signature into the docstring
(``name(self: tensorrt_bindings.tensorrt.Builder, flags: int = 0) -> ...``; several overloads are
numbered under "Overloaded function."), and every property is a ``property`` whose ``fset`` is None
when it is read-only. :func:`standin_class` turns a real class into a Python class with the same
method and property names whose calls are checked against those signatures (name, arity, keywords,
argument types) and then handed to a behaviour object (the model of what the library would do).

A call the real module would reject is rejected here with the same exception type (TypeError for a
bad call, AttributeError for an unknown name or a read-only property). The check is as strict as
pybind11's own argument casters in "convert" mode, not stricter: an ``int`` parameter takes any
object with ``__index__`` (Python ints, bools, IntEnum), a ``bool`` parameter also takes numpy bools,
a ``buffer`` parameter any object with the buffer protocol.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Param", "Overload", "parse_overloads", "standin_class", "check_call", "StandInError"]

_SIG = re.compile(r"^(?:\d+\. )?(\w*)\((.*)\) -> (.+)$")  # property setters have no name


class StandInError(NotImplementedError):
    """The stand-in does not model a call the code made (the test must fail, not pass silently)."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    has_default: bool


@dataclass(frozen=True)
class Overload:
    name: str
    params: tuple[Param, ...]  # without self
    returns: str

    def __str__(self) -> str:
        ps = ", ".join(f"{p.name}: {p.type}{' = ...' if p.has_default else ''}" for p in self.params)
        return f"{self.name}({ps}) -> {self.returns}"


def _split_params(text: str) -> list[str]:
    """Split ``a: X, b: List[int] = [1, 2]`` at top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(<{":
            depth += 1
        elif ch in "])>}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def parse_overloads(doc: str | None, drop_self: bool = True) -> list[Overload]:
    """Every signature line of a pybind11 docstring. ``drop_self`` removes the first parameter."""
    result = []
    for line in (doc or "").splitlines():
        m = _SIG.match(line.strip())
        if not m:
            continue
        params = []
        for i, p in enumerate(_split_params(m.group(2))):
            if i == 0 and drop_self:
                continue
            name, _, rest = p.partition(":")
            typ, eq, _ = rest.partition("=")
            params.append(Param(name.strip(), typ.strip(), bool(eq)))
        result.append(Overload(m.group(1), tuple(params), m.group(3).strip()))
    return result


def _type_ok(value: Any, typ: str, real_module: Any) -> bool:
    """Would pybind11 (convert mode) accept ``value`` for a parameter of type ``typ``?"""
    t = typ.strip()
    if t.startswith("typing.Optional[") or t.startswith("Optional["):
        return value is None or _type_ok(value, t[t.index("[") + 1:-1], real_module)
    if t in ("int", "typing.SupportsInt"):  # pybind11 refuses floats even in convert mode
        return (hasattr(value, "__index__") or hasattr(value, "__int__")) and not isinstance(value, (float, str))
    if t in ("float", "typing.SupportsFloat"):
        return hasattr(value, "__float__") and not isinstance(value, str)
    if t == "bool":  # convert mode: None and anything with __bool__ from the number protocol
        return value is None or isinstance(value, (bool, int)) or type(value).__name__ == "bool_"
    if t == "str":
        return isinstance(value, str)
    if t in ("buffer", "typing_extensions.Buffer", "collections.abc.Buffer"):
        try:
            memoryview(value)
            return True
        except TypeError:
            return False
    if t in ("object", "capsule", "typing_extensions.CapsuleType"):
        return True
    if t in ("list", "tuple"):
        return isinstance(value, (list, tuple))
    m = re.match(r"^(?:typing\.)?(?:List|list|collections\.abc\.Sequence)\[(.+)\]$", t)
    if m:
        return isinstance(value, (list, tuple)) and all(_type_ok(v, m.group(1), real_module) for v in value)
    if t == "collections.abc.Callable":
        return callable(value)
    m = re.match(r"^tensorrt(?:_bindings)?\.tensorrt\.(\w+(?:\.\w+)*)$", t)
    if m:
        cls: Any = real_module
        for part in m.group(1).split("."):
            cls = getattr(cls, part, None)
        if cls is None:
            raise StandInError(f"signature names unknown class {t}")
        if isinstance(value, cls):
            return True
        real = getattr(type(value), "_real", None)  # a stand-in object: accepted where its real class is
        return real is not None and issubclass(real, cls)
    if t.startswith("nvinfer1::") or t.startswith("nvonnxparser::"):
        return hasattr(value, "__index__")
    raise StandInError(f"stand-in cannot check parameter type {t!r}")


def _bind(ov: Overload, args: tuple, kwargs: dict, real_module: Any) -> str | None:
    """None when the call fits the overload, else the reason."""
    if len(args) > len(ov.params):
        return f"{len(args)} positional arguments, at most {len(ov.params)}"
    bound: dict[str, Any] = {}
    for p, a in zip(ov.params, args):
        bound[p.name] = a
    for k, v in kwargs.items():
        if k not in {p.name for p in ov.params}:
            return f"unexpected keyword {k!r}"
        if k in bound:
            return f"{k!r} given twice"
        bound[k] = v
    for p in ov.params:
        if p.name not in bound:
            if not p.has_default:
                return f"missing argument {p.name!r}"
            continue
        if not _type_ok(bound[p.name], p.type, real_module):
            return f"{p.name!r} must be {p.type}, got {type(bound[p.name]).__name__}"
    return None


def check_call(cls_name: str, overloads: list[Overload], args: tuple, kwargs: dict, real_module: Any) -> None:
    """Raise TypeError (as pybind11 does) when no overload accepts the call."""
    if not overloads:
        raise StandInError(f"{cls_name}: no signature found in the real docstring")
    reasons = [r for r in (_bind(ov, args, kwargs, real_module) for ov in overloads) if r is not None]
    if len(reasons) == len(overloads):
        sigs = "; ".join(f"{ov} ({r})" for ov, r in zip(overloads, reasons))
        raise TypeError(f"{cls_name}(): incompatible function arguments. The following argument types are "
                        f"supported: {sigs}")


def _method(real_cls: type, name: str, overloads: list[Overload], real_module: Any) -> Callable:
    qual = f"{real_cls.__name__}.{name}"

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        check_call(qual, overloads, args, kwargs, real_module)
        impl = getattr(self._impl, name, None)
        if impl is None:
            raise StandInError(f"stand-in does not model {qual}()")
        return impl(*args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"Checked against: {'; '.join(map(str, overloads))}"
    return method


def _property(real_cls: type, name: str, prop: property, real_module: Any) -> property:
    qual = f"{real_cls.__name__}.{name}"
    setter_ovs = parse_overloads(prop.fset.__doc__) if prop.fset is not None else []

    def fget(self: Any) -> Any:
        if not hasattr(self._impl, name):
            raise StandInError(f"stand-in does not model property {qual}")
        return getattr(self._impl, name)

    def fset(self: Any, value: Any) -> None:
        if prop.fset is None:
            raise AttributeError(f"property '{name}' of '{real_cls.__name__}' object has no setter")
        if setter_ovs:
            check_call(qual, setter_ovs, (value,), {}, real_module)
        setattr(self._impl, name, value)

    return property(fget, fset, doc=f"stand-in for {qual} ({'read-write' if prop.fset else 'read-only'})")


def standin_class(real_cls: type, real_module: Any, base: type = object) -> type:
    """A class with ``real_cls``'s public methods and properties, each checked, dispatching to
    ``self._impl``. Instances are made with ``cls._wrap(impl)``; the constructor is checked against
    ``real_cls.__init__``'s signature and calls ``cls._factory(*args, **kwargs) -> impl``.
    ``base=bytes`` gives the buffer protocol (``IHostMemory``); ``impl.data`` is then its content.

    Unknown attributes raise AttributeError on get and on set, as pybind11 objects do.
    """
    ns: dict[str, Any] = {"_real": real_cls}
    if base is object:
        ns["__slots__"] = ("_impl",)
    names = set()
    for klass in real_cls.__mro__:
        if klass.__module__ in ("builtins",) or klass.__name__.startswith("pybind11"):
            continue
        for name, attr in vars(klass).items():
            if name.startswith("_") or name in names:
                continue
            names.add(name)
            if isinstance(attr, property):
                ns[name] = _property(real_cls, name, attr, real_module)
            elif callable(attr):
                ovs = parse_overloads(getattr(attr, "__doc__", None))
                if ovs:
                    ns[name] = _method(real_cls, name, ovs, real_module)
    init_ovs = parse_overloads(real_cls.__init__.__doc__) if "__init__" in vars(real_cls) else []

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        check_call(f"{real_cls.__name__}.__init__", init_ovs, args, kwargs, real_module)
        factory = type(self)._factory
        if factory is None:
            raise TypeError(f"{real_cls.__name__}: No constructor defined!")
        object.__setattr__(self, "_impl", factory(*args, **kwargs))

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if not isinstance(getattr(type(self), name, None), property):
            raise AttributeError(f"'{real_cls.__module__}.{real_cls.__name__}' object has no attribute '{name}'")
        object.__setattr__(self, name, value)

    @classmethod
    def _wrap(cls: type, impl: Any) -> Any:
        obj = bytes.__new__(cls, impl.data) if base is bytes else object.__new__(cls)
        object.__setattr__(obj, "_impl", impl)
        return obj

    ns.update(__init__=__init__, __setattr__=__setattr__, _wrap=_wrap, _factory=None,
              __repr__=lambda self: f"<stand-in {real_cls.__name__}>")
    return type(f"StandIn{real_cls.__name__}", (base,) if base is not object else (), ns)
