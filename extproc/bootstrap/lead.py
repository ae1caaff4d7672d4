"""The upstream filters of a model with a lead target skip its first attempt.

The downstream filter translates a lead model's request for its lead target (the one target of
its first priority, `config.topology.model_lead`), so the first attempt, when Envoy sends it
there, needs neither the per-attempt ext_proc filter nor the buffer filter behind it: each is
wrapped in a match delegate whose matcher skips it for exactly that attempt. Envoy's router
numbers the attempts (`x-envoy-attempt-count`, the virtual host's `include_request_attempt_count`)
and the chosen endpoint's metadata names the target; a CEL matcher reads both, since no plain
matching input sees the upstream host. Any other attempt (a retry, or a first attempt Envoy sent
elsewhere while its health checks and the breaker disagree) runs the filters as before.

Envoy 1.40's CEL matcher wants a parsed expression (not CEL text), and envoy-data-plane ships
neither `CelMatcher` nor `HttpAttributesCelMatchInput` (xds' `type/matcher/v3/cel.proto` and
`http_inputs.proto`), so both are declared here, field for field, and registered under their
xds type names. Spiked on Envoy 1.40 before it was built (docs/architecture.md).
"""

from __future__ import annotations

import betterproto2
from envoy_data_plane.cel.expr import (
    Constant,
    Expr,
    ExprCall,
    ExprIdent,
    ExprSelect,
    ParsedExpr,
)
from envoy_data_plane.envoy.config.core.v3 import TypedExtensionConfig
from envoy_data_plane.envoy.extensions.common.matching.v3 import ExtensionWithMatcher
from envoy_data_plane.envoy.extensions.filters.common.matcher.action.v3 import SkipFilter
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpFilter
from envoy_data_plane.google.protobuf import Any
from envoy_data_plane.message_pool import default_message_pool
from envoy_data_plane.xds.core.v3 import TypedExtensionConfig as XdsTypedExtensionConfig
from envoy_data_plane.xds.type.matcher.v3 import (
    Matcher,
    MatcherMatcherList,
    MatcherMatcherListFieldMatcher,
    MatcherMatcherListPredicate,
    MatcherMatcherListPredicateSinglePredicate,
    MatcherOnMatch,
)
from envoy_data_plane.xds.type.v3 import CelExpression
from pydantic.dataclasses import dataclass

from extproc.contract import ATTEMPT_COUNT_HEADER, METADATA_NAMESPACE, TARGET_METADATA_KEY

MATCH_DELEGATE_FILTER = "envoy.filters.http.match_delegate"
_XDS_MATCHER_PACKAGE = "xds.type.matcher.v3"


@dataclass(eq=False, repr=False, config={"extra": "forbid"})
class HttpAttributesCelMatchInput(betterproto2.Message):
    """xds.type.matcher.v3.HttpAttributesCelMatchInput: the HTTP attributes, for CEL."""


@dataclass(eq=False, repr=False, config={"extra": "forbid"})
class CelMatcher(betterproto2.Message):
    """xds.type.matcher.v3.CelMatcher: true when the CEL expression is."""

    expr_match: CelExpression | None = betterproto2.field(
        1, betterproto2.TYPE_MESSAGE, optional=True
    )
    description: str = betterproto2.field(2, betterproto2.TYPE_STRING)


default_message_pool.register_message(
    _XDS_MATCHER_PACKAGE, "HttpAttributesCelMatchInput", HttpAttributesCelMatchInput
)
default_message_pool.register_message(_XDS_MATCHER_PACKAGE, "CelMatcher", CelMatcher)


class _Ast:
    """Builds a CEL syntax tree; every node gets the next id, as a parser would number it."""

    def __init__(self) -> None:
        self.last_id = 0

    def _node(self, **kind: object) -> Expr:
        self.last_id += 1
        return Expr(id=self.last_id, **kind)

    def ident(self, name: str) -> Expr:
        return self._node(ident_expr=ExprIdent(name=name))

    def select(self, operand: Expr, field: str) -> Expr:
        return self._node(select_expr=ExprSelect(operand=operand, field=field))

    def text(self, value: str) -> Expr:
        return self._node(const_expr=Constant(string_value=value))

    def call(self, function: str, *args: Expr) -> Expr:
        return self._node(call_expr=ExprCall(function=function, args=list(args)))

    def index(self, operand: Expr, key: str) -> Expr:
        return self.call("_[_]", operand, self.text(key))


def first_attempt_to(target: str) -> ParsedExpr:
    """`request.headers['x-envoy-attempt-count'] == '1' &&
    xds.upstream_host_metadata.filter_metadata['gw']['target'] == target`, parsed."""
    ast = _Ast()
    headers = ast.select(ast.ident("request"), "headers")
    first = ast.call("_==_", ast.index(headers, ATTEMPT_COUNT_HEADER), ast.text("1"))
    host = ast.select(ast.select(ast.ident("xds"), "upstream_host_metadata"), "filter_metadata")
    named = ast.index(ast.index(host, METADATA_NAMESPACE), TARGET_METADATA_KEY)
    chosen = ast.call("_==_", named, ast.text(target))
    return ParsedExpr(expr=ast.call("_&&_", first, chosen))


def skipped_for_lead(name: str, config: betterproto2.Message, lead: str) -> HttpFilter:
    """The upstream filter `name`, skipped for the first attempt when it goes to `lead`."""
    predicate = MatcherMatcherListPredicateSinglePredicate(
        input=XdsTypedExtensionConfig(
            name="attributes", typed_config=Any.pack(HttpAttributesCelMatchInput())
        ),
        custom_match=XdsTypedExtensionConfig(
            name="first_attempt_to_lead",
            typed_config=Any.pack(
                CelMatcher(
                    expr_match=CelExpression(cel_expr_parsed=first_attempt_to(lead)),
                    description=f"the first attempt, to the lead target {lead}",
                )
            ),
        ),
    )
    skip = MatcherOnMatch(
        action=XdsTypedExtensionConfig(name="skip", typed_config=Any.pack(SkipFilter()))
    )
    matcher = Matcher(
        matcher_list=MatcherMatcherList(
            matchers=[
                MatcherMatcherListFieldMatcher(
                    predicate=MatcherMatcherListPredicate(single_predicate=predicate),
                    on_match=skip,
                )
            ]
        )
    )
    wrapped = ExtensionWithMatcher(
        xds_matcher=matcher,
        extension_config=TypedExtensionConfig(name=name, typed_config=Any.pack(config)),
    )
    return HttpFilter(name=MATCH_DELEGATE_FILTER, typed_config=Any.pack(wrapped))
