"""The subset of SOQL the Salesforce double understands, with Salesforce's error messages.

Grammar (keywords and field names are case-insensitive, as in SOQL)::

    SELECT field (, field)* FROM object [WHERE condition]
        [ORDER BY field [ASC|DESC] (, field [ASC|DESC])*] [LIMIT n]
    condition := term (OR term)*        term := factor (AND factor)*
    factor    := NOT factor | ( condition ) | field op literal | field [NOT] IN ( literal, ... )
    op        := = | != | <> | < | <= | > | >=
    literal   := 'text' | number | true | false | null | a dateTime (2026-01-02T03:04:05Z,
                 optionally with .SSS and/or +hh:mm / -hh:mm) | a date (2026-01-02)

A query the grammar does not accept fails as Salesforce fails it: ``MALFORMED_QUERY`` with the
query, a caret under the offending token, ``ERROR at Row:1:Column:N`` and the reason. A field the
object does not have fails with ``INVALID_FIELD`` and Salesforce's "No such column" text; an
unknown object with ``INVALID_TYPE``. Comparisons follow SOQL: ``null`` equals only null, and any
other comparison with null is false.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^'\\]|\\.)*')
      | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2}))
      | (?P<date>\d{4}-\d{2}-\d{2})
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<op><=|>=|!=|<>|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<bad>\S)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"select", "from", "where", "order", "by", "asc", "desc", "limit", "and", "or",
             "not", "in", "null", "true", "false", "nulls", "first", "last"}


class SoqlError(Exception):
    """A query Salesforce would refuse: ``error_code`` and ``message`` as Salesforce words them."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    column: int  # 1-based, as Salesforce counts


@dataclass
class Query:
    """A parsed query: what to select, from where, which rows, in which order, how many."""

    text: str
    fields: list[str]
    object_name: str
    where: Callable[[Mapping[str, Any]], bool] = field(default=lambda _row: True)
    order: list[tuple[str, bool]] = field(default_factory=list)  # (field, descending)
    limit: int | None = None


Schema = Mapping[str, Mapping[str, str]]  # object -> lower-cased field name -> canonical name


def parse(text: str, schema: Schema) -> Query:
    """Parse ``text`` against ``schema``; raise ``SoqlError`` as Salesforce would."""
    return _Parser(text, schema).query()


def parse_datetime(text: str) -> datetime:
    """A SOQL dateTime literal or a Salesforce dateTime value, as an aware UTC datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _tokens(text: str) -> list[_Token]:
    found: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            break
        kind = match.lastgroup or "bad"
        found.append(_Token(kind, match.group(kind), match.start(kind) + 1))
        position = match.end()
    found.append(_Token("eof", "<EOF>", len(text.rstrip()) + 1))
    return found


class _Parser:
    def __init__(self, text: str, schema: Schema) -> None:
        self.text = text
        self.schema = schema
        self.tokens = _tokens(text)
        self.at = 0
        self.fields: Mapping[str, str] = {}
        self.object_name = ""

    # errors ----------------------------------------------------------------------------------
    def _fail(self, code: str, token: _Token, reason: str) -> SoqlError:
        caret = " " * (token.column - 1) + "^"
        return SoqlError(code, f"\n{self.text}\n{caret}\nERROR at Row:1:Column:{token.column}\n"
                               f"{reason}")

    def _unexpected(self) -> SoqlError:
        token = self.tokens[self.at]
        return self._fail("MALFORMED_QUERY", token, f"unexpected token: {token.text}")

    # token helpers ---------------------------------------------------------------------------
    def _peek(self, *words: str) -> bool:
        token = self.tokens[self.at]
        return token.kind == "word" and token.text.lower() in words

    def _take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def _expect_word(self, word: str) -> None:
        if not self._peek(word):
            raise self._unexpected()
        self.at += 1

    def _expect_punct(self, punct: str) -> None:
        token = self.tokens[self.at]
        if token.kind != "punct" or token.text != punct:
            raise self._unexpected()
        self.at += 1

    def _name(self) -> _Token:
        token = self.tokens[self.at]
        if token.kind != "word" or token.text.lower() in _KEYWORDS:
            raise self._unexpected()
        self.at += 1
        return token

    def _field(self, token: _Token) -> str:
        canonical = self.fields.get(token.text.lower())
        if canonical is None:
            raise self._fail(
                "INVALID_FIELD", token,
                f"No such column '{token.text}' on entity '{self.object_name}'. If you are "
                "attempting to use a custom field, be sure to append the '__c' after the custom "
                "field name. Please reference your WSDL or the describe call for the appropriate "
                "names.")
        return canonical

    # grammar ---------------------------------------------------------------------------------
    def query(self) -> Query:
        self._expect_word("select")
        names = [self._name()]
        while self.tokens[self.at].text == ",":
            self.at += 1
            names.append(self._name())
        self._expect_word("from")
        obj = self._name()
        found = next((o for o in self.schema if o.lower() == obj.text.lower()), None)
        if found is None:
            raise self._fail(
                "INVALID_TYPE", obj,
                f"sObject type '{obj.text}' is not supported. If you are attempting to use a "
                "custom object, be sure to append the '__c' after the entity name. Please "
                "reference your WSDL or the describe call for the appropriate names.")
        self.object_name, self.fields = found, self.schema[found]
        query = Query(self.text, [self._field(n) for n in names], found)
        if self._peek("where"):
            self.at += 1
            query.where = self._condition()
        if self._peek("order"):
            self.at += 1
            self._expect_word("by")
            query.order = [self._order_item()]
            while self.tokens[self.at].text == ",":
                self.at += 1
                query.order.append(self._order_item())
        if self._peek("limit"):
            self.at += 1
            token = self._take()
            if token.kind != "number" or not token.text.isdigit():
                self.at -= 1
                raise self._unexpected()
            query.limit = int(token.text)
        if self.tokens[self.at].kind != "eof":
            raise self._unexpected()
        return query

    def _order_item(self) -> tuple[str, bool]:
        name = self._field(self._name())
        descending = False
        if self._peek("asc", "desc"):
            descending = self._take().text.lower() == "desc"
        return name, descending

    def _condition(self) -> Callable[[Mapping[str, Any]], bool]:
        terms = [self._term()]
        while self._peek("or"):
            self.at += 1
            terms.append(self._term())
        return terms[0] if len(terms) == 1 else (lambda row: any(t(row) for t in terms))

    def _term(self) -> Callable[[Mapping[str, Any]], bool]:
        factors = [self._factor()]
        while self._peek("and"):
            self.at += 1
            factors.append(self._factor())
        return factors[0] if len(factors) == 1 else (lambda row: all(f(row) for f in factors))

    def _factor(self) -> Callable[[Mapping[str, Any]], bool]:
        if self._peek("not"):
            self.at += 1
            inner = self._factor()
            return lambda row: not inner(row)
        if self.tokens[self.at].text == "(":
            self.at += 1
            inner = self._condition()
            self._expect_punct(")")
            return inner
        name = self._field(self._name())
        negate = False
        if self._peek("not"):
            self.at += 1
            negate = True
            if not self._peek("in"):
                raise self._unexpected()
        if self._peek("in"):
            self.at += 1
            self._expect_punct("(")
            values = [self._literal()]
            while self.tokens[self.at].text == ",":
                self.at += 1
                values.append(self._literal())
            self._expect_punct(")")
            return lambda row: (_value(row, name) in values) != negate
        token = self._take()
        if token.kind != "op":
            self.at -= 1
            raise self._unexpected()
        literal = self._literal()
        return _comparison(name, token.text, literal)

    def _literal(self) -> Any:
        token = self._take()
        if token.kind == "string":
            return re.sub(r"\\(.)", r"\1", token.text[1:-1])
        if token.kind == "datetime":
            return parse_datetime(token.text)
        if token.kind == "date":
            return date.fromisoformat(token.text)
        if token.kind == "number":
            return float(token.text) if "." in token.text else int(token.text)
        if token.kind == "word" and token.text.lower() in ("null", "true", "false"):
            return {"null": None, "true": True, "false": False}[token.text.lower()]
        self.at -= 1
        raise self._unexpected()


def _value(row: Mapping[str, Any], name: str) -> Any:
    return row.get(name)


_ORDERING: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _comparison(name: str, op: str, literal: Any) -> Callable[[Mapping[str, Any]], bool]:
    def compare(row: Mapping[str, Any]) -> bool:
        value = row.get(name)
        if op in ("=", "!=", "<>"):
            return bool(value == literal) == (op == "=")
        if value is None or literal is None:
            return False
        try:
            return bool(_ORDERING[op](value, literal))
        except TypeError:
            return False

    return compare
