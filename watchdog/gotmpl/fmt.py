"""Go's fmt for template values: what `{{ .Value }}`, `print`, `println` and `printf` write.

Mirrors fmt's print.go and format.go for the types a template can hold (strings, ints, float64,
bools, maps of strings, Prometheus's data struct, template.HTML): verbs, flags, width, precision,
argument indexes and Go's `%!verb(...)` complaints; numbers come from `watchdog.gocompat`'s
strconv. It must not do I/O or read the clock, and it knows nothing of parsing or execution.
"""

from __future__ import annotations

from dataclasses import dataclass

from watchdog.gocompat import can_backquote, format_float, quote
from watchdog.gotmpl.values import STRUCT_TYPE, TemplateData, Value, type_name

__all__ = ["NO_FLAGS", "Flags", "print_action", "print_arg", "sprint", "sprintf", "sprintln"]


@dataclass
class Flags:
    plus: bool = False
    minus: bool = False
    sharp: bool = False
    space: bool = False
    zero: bool = False
    wid: int | None = None
    prec: int | None = None
    plus_v: bool = False
    sharp_v: bool = False


NO_FLAGS = Flags()


def _pad(s: str, f: Flags, zero: bool | None = None) -> str:
    if f.wid is None or f.wid <= len(s):
        return s
    fill = "0" if (f.zero if zero is None else zero) else " "
    return s + " " * (f.wid - len(s)) if f.minus else fill * (f.wid - len(s)) + s



def _fmt_float(x: float, verb: str, f: Flags) -> str:
    """fmt's (*fmt).fmtFloat: sign, padding and the '#' flag around strconv."""
    if verb == "v":
        verb = "g"
    default = -1 if verb in "gGxXb" else 6
    prec = f.prec if f.prec is not None else default
    num = format_float(x, "f" if verb == "F" else verb, prec)
    num = num if num[0] in "+-" else "+" + num
    if f.space and num[0] == "+" and not f.plus:
        num = " " + num[1:]
    if num[1] in "IN":  # Inf and NaN are never zero padded
        if num[1] == "N" and not f.space and not f.plus:
            num = num[1:]
        return _pad(num, f, zero=False)
    if f.sharp and verb != "b":
        num = _sharp_float(num, verb, prec)
    if f.plus or num[0] != "+":
        if f.zero and f.wid is not None and f.wid > len(num):
            return num[0] + "0" * (f.wid - len(num)) + num[1:]
        return _pad(num, f)
    return _pad(num[1:], f)


def _sharp_float(num: str, verb: str, prec: int) -> str:
    """The '#' flag: always a decimal point, and %g keeps its trailing zeros."""
    digits = (6 if prec == -1 else prec) if verb in "vgGxX" else 0
    tail = ""
    body = num
    for i in range(1, len(num)):
        c = num[i]
        if c in "pP" or (c in "eE" and verb not in "xX"):
            body, tail = num[:i], num[i:]
            break
    seen_nonzero = False
    for c in body[1:]:
        if c == ".":
            continue
        seen_nonzero = seen_nonzero or c != "0"
        if seen_nonzero:
            digits -= 1
    if "." not in body:
        if body[1:] == "0":
            digits -= 1
        body += "."
    return body + "0" * max(digits, 0) + tail


def _fmt_int(n: int, verb: str, f: Flags) -> str:
    """fmt's fmtInteger plus %c, %q and %U."""
    c = chr(n) if 0 <= n <= 0x10FFFF and not 0xD800 <= n <= 0xDFFF else "\ufffd"
    if verb == "c":
        return _pad(c, f)
    if verb == "q":
        quoted = "'" + quote(c, f.plus)[1:-1].replace('\\"', '"').replace("'", "\\'") + "'"
        return _pad(quoted, f)
    if verb == "U":
        return _pad(f"U+{n:04X}" if n >= 0 else f"U+{n & (2**64 - 1):04X}", f)
    base = {"d": 10, "v": 10, "b": 2, "o": 8, "O": 8, "x": 16, "X": 16}[verb]
    neg = n < 0
    body = {2: f"{abs(n):b}", 8: f"{abs(n):o}", 10: str(abs(n)), 16: f"{abs(n):x}"}[base]
    if verb == "X":
        body = body.upper()
    prec = 0
    if f.prec is not None:
        prec = f.prec
        if prec == 0 and n == 0:
            return _pad("", f, zero=False)
    elif f.zero and f.wid is not None:
        prec = f.wid - (1 if neg or f.plus or f.space else 0)
    body = body.rjust(prec, "0")
    if f.sharp:
        if base == 2:
            body = "0b" + body
        elif base == 8 and not body.startswith("0"):
            body = "0" + body
        elif base == 16:
            body = ("0x" if verb == "x" else "0X") + body
    if verb == "O":
        body = "0o" + body
    sign = "-" if neg else "+" if f.plus else " " if f.space else ""
    return _pad(sign + body, f, zero=False)


def _fmt_str(s: str, verb: str, f: Flags) -> str:
    if f.prec is not None and verb not in "xX":
        s = s[: f.prec]  # precision counts runes here, but bytes for %x
    if verb in ("v", "s") and not (verb == "v" and f.sharp_v):
        return _pad(s, f)
    if verb in ("q", "v"):
        if f.sharp and can_backquote(s):
            return _pad("`" + s + "`", f)
        return _pad(quote(s, f.plus), f)
    # %x / %X: hex of the UTF-8 bytes (precision counts bytes, so re-slice)
    data = s.encode("utf-8", "surrogatepass")[: f.prec]
    if not data:
        return _pad("", f)
    hexdigits = [format(b, "02x" if verb == "x" else "02X") for b in data]
    prefix = "0x" if verb == "x" else "0X"
    if f.space:
        parts = [prefix + h if f.sharp else h for h in hexdigits]
        return _pad(" ".join(parts), f)
    return _pad((prefix if f.sharp else "") + "".join(hexdigits), f)


def print_arg(v: Value, verb: str, f: Flags) -> str:
    """fmt's printArg/printValue for the values a template can hold."""
    if verb == "T":
        return _pad(type_name(v), f)
    if v is None:
        return _pad("<nil>", f) if verb == "v" else _bad_verb(v, verb, f)
    if isinstance(v, bool):
        return _pad("true" if v else "false", f) if verb in "tv" else _bad_verb(v, verb, f)
    if isinstance(v, int):
        return _fmt_int(v, verb, f) if verb in "vdboOxXcqU" else _bad_verb(v, verb, f)
    if isinstance(v, float):
        return _fmt_float(v, verb, f) if verb in "vbgGxXfFeE" else _bad_verb(v, verb, f)
    if isinstance(v, str):
        return _fmt_str(v, verb, f) if verb in "vsxXq" else _bad_verb(v, verb, f)
    if isinstance(v, TemplateData):
        fields: list[tuple[str, Value]] = [
            ("Labels", v.labels),
            ("ExternalLabels", v.external_labels),
            ("ExternalURL", v.external_url),
            ("Value", v.value),
        ]
        if f.sharp_v:
            inner = ", ".join(f"{k}:{print_arg(x, verb, f)}" for k, x in fields)
            return STRUCT_TYPE + "{" + inner + "}"
        parts = ((k + ":" if f.plus_v else "") + print_arg(x, verb, f) for k, x in fields)
        return "{" + " ".join(parts) + "}"
    if isinstance(v, tuple):
        if f.sharp_v:
            return "[]interface {}{" + ", ".join(print_arg(x, verb, f) for x in v) + "}"
        return "[" + " ".join(print_arg(x, verb, f) for x in v) + "]"
    items = [(print_arg(k, verb, f), print_arg(v[k], verb, f)) for k in sorted(v)]
    if f.sharp_v:
        return "map[string]string{" + ", ".join(f"{k}:{x}" for k, x in items) + "}"
    return "map[" + " ".join(f"{k}:{x}" for k, x in items) + "]"


def _bad_verb(v: Value, verb: str, f: Flags) -> str:
    inner = "<nil>" if v is None else f"{type_name(v)}={print_arg(v, 'v', f)}"
    return f"%!{verb}({inner})"


def _parse_num(fmt: str, i: int) -> tuple[int | None, int]:
    """fmt's parsenum: an absurdly long number consumes the rest of the format."""
    num, start = 0, i
    while i < len(fmt) and fmt[i].isascii() and fmt[i].isdigit():
        if num > 1_000_000:
            return None, len(fmt)
        num = num * 10 + int(fmt[i])
        i += 1
    return (num if i > start else None), i


class _Printf:
    """Go's fmt.Sprintf (doPrintf), for the value types templates have."""

    def __init__(self, fmt: str, args: list[Value]) -> None:
        self.fmt, self.args = fmt, args
        self.i = 0  # position in fmt
        self.argn = 0  # next argument
        self.reordered = False  # an explicit [n] index was used
        self.good = True  # the current verb's argument index is valid

    def arg_index(self) -> bool:
        """Parse an optional [n]; returns whether one was found."""
        fmt, i = self.fmt, self.i
        if i >= len(fmt) or fmt[i] != "[":
            return False
        self.reordered = True
        close = fmt.find("]", i + 1)
        if len(fmt) - i < 3 or close < 0:
            self.good, self.i = False, i + 1
            return False
        num, end = _parse_num(fmt, i + 1)
        self.i = close + 1
        if num is None or end != close:
            self.good = False
            return False
        if 0 < num <= len(self.args):
            self.argn = num - 1
        else:
            self.good = False
        return True

    def int_arg(self) -> int | None:
        """A '*' width or precision, taken from the arguments."""
        if self.argn >= len(self.args):
            return None
        a = self.args[self.argn]
        self.argn += 1
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) <= 1_000_000:
            return a
        return None

    def run(self) -> str:
        fmt, out = self.fmt, []
        n = len(fmt)
        while self.i < n:
            j = fmt.find("%", self.i)
            if j < 0:
                out.append(fmt[self.i :])
                break
            out.append(fmt[self.i : j])
            self.i = j + 1
            piece = self.verb()
            if piece is None:
                out.append("%!(NOVERB)")
                break
            out.append(piece)
        if not self.reordered and self.argn < len(self.args):
            extra = ", ".join(
                "<nil>" if a is None else f"{type_name(a)}={print_arg(a, 'v', NO_FLAGS)}"
                for a in self.args[self.argn :]
            )
            out.append(f"%!(EXTRA {extra})")
        return "".join(out)

    def verb(self) -> str | None:
        """Format one %-directive starting at self.i (after the %); None if it has no verb."""
        fmt, n, f = self.fmt, len(self.fmt), Flags()
        out: list[str] = []
        while self.i < n and fmt[self.i] in "#0+- ":
            c = fmt[self.i]
            if c == "#":
                f.sharp = True
            elif c == "0":
                f.zero = not f.minus  # only pad with zeros on the left
            elif c == "+":
                f.plus = True
            elif c == "-":
                f.minus, f.zero = True, False
            else:
                f.space = True
            self.i += 1
        self.good = True
        after_index = self.arg_index()
        if self.i < n and fmt[self.i] == "*":
            self.i += 1
            f.wid = self.int_arg()
            if f.wid is None:
                out.append("%!(BADWIDTH)")
            elif f.wid < 0:
                f.wid, f.minus, f.zero = -f.wid, True, False
            after_index = False
        else:
            f.wid, self.i = _parse_num(fmt, self.i)
            if after_index and f.wid is not None:
                self.good = False
        if self.i + 1 < n and fmt[self.i] == ".":
            self.i += 1
            if after_index:
                self.good = False
            after_index = self.arg_index()
            if self.i < n and fmt[self.i] == "*":
                self.i += 1
                f.prec = self.int_arg()
                if f.prec is not None and f.prec < 0:
                    f.prec = None
                if f.prec is None:
                    out.append("%!(BADPREC)")
                after_index = False
            else:
                f.prec, self.i = _parse_num(fmt, self.i)
                if f.prec is None:
                    f.prec = 0
        if not after_index:
            self.arg_index()
        if self.i >= n:
            return None if not out else "".join(out) + "%!(NOVERB)"
        verb = fmt[self.i]
        self.i += 1
        if verb == "%":
            out.append("%")  # %% takes no argument and ignores width and precision
        elif not self.good:
            out.append(f"%!{verb}(BADINDEX)")
        elif self.argn >= len(self.args):
            out.append(f"%!{verb}(MISSING)")
        else:
            if verb == "v":
                f.sharp_v, f.sharp = f.sharp, False
                f.plus_v, f.plus = f.plus, False
            out.append(print_arg(self.args[self.argn], verb, f))
            self.argn += 1
        return "".join(out)


def sprintf(fmt: str, args: list[Value]) -> str:
    return _Printf(fmt, args).run()


def sprintln(*args: Value) -> str:
    """fmt.Sprintln: always a space between operands, and a newline."""
    return " ".join(print_arg(a, "v", NO_FLAGS) for a in args) + "\n"


def print_action(v: Value) -> str:
    """What {{ pipeline }} writes: fmt.Fprint of the value, or <no value> for nothing."""
    return "<no value>" if v is None else print_arg(v, "v", NO_FLAGS)


def sprint(args: list[Value]) -> str:
    """fmt.Sprint: a space between operands when neither is a string."""
    out: list[str] = []
    prev_string = False
    for k, a in enumerate(args):
        is_string = isinstance(a, str)
        if k > 0 and not is_string and not prev_string:
            out.append(" ")
        out.append(print_arg(a, "v", NO_FLAGS))
        prev_string = is_string
    return "".join(out)
