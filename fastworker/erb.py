"""The subset of ERB that Sidekiq YAML files use, evaluated without Ruby.

Sidekiq renders config/sidekiq.yml with ERB before reading it as YAML. fastworker evaluates the
forms real files use and refuses the rest with a clear error (it does not run Ruby):
  <%= ENV["X"] %>  <%= ENV['X'] %>  <%= ENV.fetch("X") %>  <%= ENV.fetch("X", 5) %>
  <%= ENV.fetch("X") { 5 } %>  <%= ENV["X"] || 5 %>  <%= Integer(ENV.fetch("X", 5)) %>  Float(...)
  .to_i / .to_f / .to_s, literals (strings, numbers, nil, true, false, :symbols), parentheses,
  <%# comments %>, <%% (a literal "<%"), and "-%>" (drops the newline after the tag).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping


class ErbError(Exception):
    """The template cannot be rendered; the message names the file and the expression."""


_ERB_TAG = re.compile(r"<%(%|#|=|-|)(.*?)(-?)%>", re.S)
_ERB_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<num>-?\d[\d_]*(?:\.\d+)?(?:[eE][+-]?\d+)?)
      | (?P<sym>:[A-Za-z_]\w*)
      | (?P<name>[A-Za-z_]\w*)
      | (?P<op>\|\||[\[\](){},.])
    )""",
    re.X,
)


class _Unsupported(Exception):
    pass


class _ErbFailed(Exception):
    """Valid, supported Ruby that would raise in Ruby too (missing ENV.fetch key, Integer("abc"))."""


def render_erb(text: str, path: str, env: Mapping[str, str]) -> str:
    out: list[str] = []
    pos = 0
    for match in _ERB_TAG.finditer(text):
        kind, body, trim = match.group(1), match.group(2), match.group(3)
        out.append(text[pos : match.start()])
        pos = match.end()
        if kind == "%":  # "<%%" is a literal "<%"; the rest of the match is plain text
            out.append("<%" + body + trim + "%>")
            continue
        if trim and pos < len(text) and text[pos] == "\n":
            pos += 1
        if kind == "#":
            continue
        shown = f"<%{kind}{body}{trim}%>"
        if kind != "=":
            raise ErbError(f"{path}: unsupported ERB {shown} (fastworker evaluates only <%= ... %> "
                              "with ENV lookups and literals, it does not run Ruby)")
        try:
            out.append(ruby_to_s(_ErbExpr(body.strip(), env).evaluate()))
        except _Unsupported as exc:
            raise ErbError(f"{path}: unsupported ERB expression {shown}: {exc} (fastworker evaluates only "
                              "ENV[...], ENV.fetch, ||, Integer()/Float(), .to_i/.to_f/.to_s and literals; "
                              "it does not run Ruby)") from None
        except _ErbFailed as exc:
            raise ErbError(f"{path}: ERB expression {shown}: {exc}") from None
    out.append(text[pos:])
    return "".join(out)


class _ErbExpr:
    """Recursive-descent parser producing thunks, so that ``a || b`` never evaluates ``b`` when ``a`` is
    set (``ENV["A"] || ENV.fetch("B")`` must not fail when A is set, as in Ruby)."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.env = env
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(source):
            if source[pos:].strip() == "":
                break
            m = _ERB_TOKEN.match(source, pos)
            if not m or m.end() == pos:
                raise _Unsupported(f"cannot read {source[pos:].strip()!r}")
            kind = m.lastgroup
            assert kind is not None
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def evaluate(self) -> object:
        if not self.tokens:
            return None
        thunk = self._or()
        if self.i != len(self.tokens):
            raise _Unsupported(f"unexpected {self.tokens[self.i][1]!r}")
        return thunk()

    # -- token helpers
    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _accept(self, value: str) -> bool:
        tok = self._peek()
        if tok is not None and tok[1] == value and tok[0] in ("op", "name"):
            self.i += 1
            return True
        return False

    def _expect(self, value: str) -> None:
        if not self._accept(value):
            tok = self._peek()
            raise _Unsupported(f"expected {value!r}, got {tok[1] if tok else 'end of expression'!r}")

    # -- grammar
    def _or(self) -> Callable[[], object]:
        left = self._postfix()
        while self._accept("||"):
            right = self._postfix()
            left = (lambda a, b: lambda: (v if (v := a()) is not None and v is not False else b()))(left, right)
        return left

    def _postfix(self) -> Callable[[], object]:
        thunk = self._atom()
        while self._accept("."):
            tok = self._peek()
            conversions = {"to_i": _ruby_to_i, "to_f": _ruby_to_f, "to_s": ruby_to_s}
            if tok is None or tok[0] != "name" or tok[1] not in conversions:
                raise _Unsupported(f"method .{tok[1] if tok else ''} is not supported")
            self.i += 1
            thunk = (lambda t, f: lambda: f(t()))(thunk, conversions[tok[1]])
        return thunk

    def _atom(self) -> Callable[[], object]:
        tok = self._peek()
        if tok is None:
            raise _Unsupported("expression ends early")
        kind, text = tok
        self.i += 1
        if kind == "str":
            value: object = _ruby_string(text)
            return lambda: value
        if kind == "num":
            digits = text.replace("_", "")
            number: object = float(digits) if any(c in digits for c in ".eE") else int(digits)
            return lambda: number
        if kind == "sym":
            sym = text[1:]
            return lambda: sym
        if kind == "op" and text == "(":
            inner = self._or()
            self._expect(")")
            return inner
        if kind == "name":
            literals = {"nil": None, "true": True, "false": False}
            if text in literals:
                lit = literals[text]
                return lambda: lit
            if text == "ENV":
                return self._env()
            if text in ("Integer", "Float"):
                self._expect("(")
                arg = self._or()
                self._expect(")")
                convert = _ruby_integer if text == "Integer" else _ruby_float
                return lambda: convert(arg())
        raise _Unsupported(f"{text!r} is not supported")

    def _env_key(self) -> str:
        tok = self._peek()
        if tok is None or tok[0] != "str":
            raise _Unsupported("the ENV key must be a string literal")
        self.i += 1
        return _ruby_string(tok[1])

    def _env(self) -> Callable[[], object]:
        env = self.env
        if self._accept("["):
            key = self._env_key()
            self._expect("]")
            return lambda: env.get(key)
        self._expect(".")
        self._expect("fetch")
        self._expect("(")
        key = self._env_key()
        default = self._or() if self._accept(",") else None
        self._expect(")")
        block = None
        if self._accept("{"):
            block = self._or()
            self._expect("}")

        def fetch() -> object:
            if key in env:
                return env[key]
            if block is not None:
                return block()
            if default is not None:
                return default()
            raise _ErbFailed(f"environment variable {key!r} is not set (ENV.fetch without a default)")

        return fetch


def _ruby_string(token: str) -> str:
    body = token[1:-1]
    if token[0] == "'":
        return re.sub(r"\\([\\'])", r"\1", body)
    if "#{" in body:
        raise _Unsupported("string interpolation is not supported")
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "s": " ", "0": "\0"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(1)), body)


def ruby_to_s(value: object) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exp = text.partition("e")
        if e and "." not in mantissa:
            text = f"{mantissa}.0e{exp}"
        return text
    return str(value)


def _ruby_integer(value: object) -> int:
    """Ruby's Integer(): strict for strings (whitespace, underscores, 0x/0b/0o and leading-0 octal)."""
    if isinstance(value, bool) or value is None:
        raise _ErbFailed(f"Integer() cannot convert {_ruby_inspect(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _ErbFailed(f"Integer() cannot convert {value!r}")
        return int(value)
    text = str(value).strip()
    try:
        if re.fullmatch(r"[+-]?0[0-7_]+", text):
            return int(text.replace("_", ""), 8)
        return int(text, 0)
    except ValueError:
        raise _ErbFailed(f"invalid value for Integer(): {text!r}") from None


def _ruby_float(value: object) -> float:
    if isinstance(value, bool) or value is None:
        raise _ErbFailed(f"Float() cannot convert {_ruby_inspect(value)}")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if not re.fullmatch(r"[+-]?\d[\d_]*(\.\d+)?([eE][+-]?\d+)?", text):
        raise _ErbFailed(f"invalid value for Float(): {text!r}")
    return float(text.replace("_", ""))


def _ruby_to_i(value: object) -> int:
    if isinstance(value, bool):
        raise _Unsupported(f"{_ruby_inspect(value)}.to_i is not defined in Ruby")
    if isinstance(value, (int, float)):
        return int(value)
    m = re.match(r"\s*([+-]?\d+(?:_\d+)*)", ruby_to_s(value))
    return int(m.group(1).replace("_", "")) if m else 0


def _ruby_to_f(value: object) -> float:
    if isinstance(value, bool):
        raise _Unsupported(f"{_ruby_inspect(value)}.to_f is not defined in Ruby")
    if isinstance(value, (int, float)):
        return float(value)
    m = re.match(r"\s*([+-]?\d+(?:_\d+)*(?:\.\d+)?(?:[eE][+-]?\d+)?)", ruby_to_s(value))
    return float(m.group(1).replace("_", "")) if m else 0.0


def _ruby_inspect(value: object) -> str:
    return "nil" if value is None else ruby_to_s(value)

