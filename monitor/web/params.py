"""Query parameters as pydantic models, one per route that takes any, so /openapi.json documents them.

Routes take them through the dependencies at the bottom (`Annotated[Model, Depends(...)]`). What every model
refuses, with a message naming the parameter (400): a name it does not know, a parameter given twice, a
required one missing (an empty value counts as none), a value of the wrong form. The messages are errors of type
"query_value" (monitor.web.app answers them as they are).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Annotated, Any, Callable, Literal, Optional

from fastapi import Depends, Query, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from monitor.config.fields import NAME_RE
from monitor.core.labels import LANGUAGES
from monitor.web.deps import ServicesDep
from monitor.web.errors import ApiError

EVENTS_LIMIT_MAX = 1000
QUERY_ERROR = "query_value"          # the error type of every refusal below


def refuse(message: str) -> PydanticCustomError:
    # the message is a context value, not the template: braces a client sent are not formatted
    return PydanticCustomError(QUERY_ERROR, "{message}", {"message": message})


class QueryModel(BaseModel):
    """The query parameters of one route: unknown names refused, an empty value taken as none given."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_and_given(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        names = [field.alias or name for name, field in cls.model_fields.items()]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise refuse(f"unknown query parameter {unknown[0]!r} (allowed: {', '.join(names)})")
        given = {key: value for key, value in data.items() if value != ""}
        for name, field in cls.model_fields.items():
            if field.is_required() and (field.alias or name) not in given:
                raise refuse(f"missing query parameter {field.alias or name!r}")
        return given


def _flag(words: dict[str, bool]) -> Callable[[Any, ValidationInfo], bool]:
    def parse(value: Any, info: ValidationInfo) -> bool:
        text = str(value)
        if text.lower() not in words:
            raise refuse(f"{info.field_name} must be true or false (got {text[:20]!r})")
        return words[text.lower()]
    return parse


Flag = Annotated[bool, BeforeValidator(_flag({"true": True, "false": False}))]


def _camera(value: Any) -> str:
    text = str(value)
    if not NAME_RE.fullmatch(text):
        raise refuse(f"camera: not a camera name ({text[:64]!r})")
    return text


def _since(value: Any) -> float:
    raw = str(value)
    try:
        since = float(raw)
    except ValueError:
        raise refuse(f"since: expected Unix time in seconds (got {raw[:64]!r})") from None
    if not math.isfinite(since) or since < 0:
        raise refuse(f"since: expected a finite Unix time >= 0 (got {raw[:64]!r})")
    return since


def _limit(value: Any) -> int:
    raw = str(value)
    if not re.fullmatch(r"[0-9]{1,7}", raw) or not 1 <= int(raw) <= EVENTS_LIMIT_MAX:
        raise refuse(f"limit: expected an integer 1..{EVENTS_LIMIT_MAX} (got {raw[:64]!r})")
    return int(raw)


def _lang(value: Any) -> str:
    text = str(value)
    if text.lower() not in LANGUAGES:
        raise refuse(f"lang must be one of {', '.join(LANGUAGES)} (got {text[:20]!r})")
    return text.lower()


# the display names' language; absent: the config's labels.language. Machine fields (index, English label) stay.
Lang = Annotated[Optional[Literal["en", "zh"]], BeforeValidator(_lang)]
_LANG_DOC = "language of the `display` names: en or zh (absent: labels.language of the config)"


class EventsQuery(QueryModel):
    camera: Annotated[Optional[str], BeforeValidator(_camera)] = Field(
        None, pattern=f"^{NAME_RE.pattern}$", description="only the events of this camera")
    since: Annotated[Optional[float], BeforeValidator(_since)] = Field(
        None, ge=0, description="only events that started at or after this Unix time (seconds)")
    limit: Annotated[int, BeforeValidator(_limit)] = Field(
        100, ge=1, le=EVENTS_LIMIT_MAX, description="at most this many events")
    scope: Literal["local", "fleet"] = Field("local", description=(
        "local: this node's history (SQLite); fleet: every node's events from the fleet's PostgreSQL (with node "
        "and absolute snapshot_url; needs fleet)"))
    lang: Lang = Field(None, description=_LANG_DOC)


class LabelFrameQuery(QueryModel):
    head: str = Field(description="the custom class (head) to file the frame under")
    class_: str = Field(alias="class", description="the head's class the frame shows")


class LabelEventQuery(QueryModel):
    right: Flag = Field(description="true: the event was right (its frame is filed under its class); false: "
                                    "wrong (filed under none)")


class HeatmapQuery(QueryModel):
    on: Flag = Field(description="true shows the class activation map in the live view, false hides it")


class StatusQuery(QueryModel):
    lang: Lang = Field(None, description=_LANG_DOC)


class ClassifyQuery(QueryModel):
    lang: Lang = Field(None, description=_LANG_DOC)
    explain: Annotated[bool, BeforeValidator(_flag({"true": True, "false": False, "1": True, "0": False}))] = Field(
        False, description="also answer the top class's activation map (grid 7x7 over box)")


async def single_values(request: Request) -> None:
    """400 for a parameter given more than once: which value was meant cannot be told."""
    for key, count in Counter(key for key, _ in request.query_params.multi_items()).items():
        if count > 1:
            raise ApiError(400, f"query parameter {key!r} given {count} times")


OneEach = Annotated[None, Depends(single_values)]


async def events_query(_: OneEach, query: Annotated[EventsQuery, Query()], services: ServicesDep) -> EventsQuery:
    if query.camera is not None and query.camera not in services.cameras and query.scope != "fleet":
        raise ApiError(404, f"camera: no camera named {query.camera!r}")
    return query


async def label_frame_query(_: OneEach, query: Annotated[LabelFrameQuery, Query()]) -> LabelFrameQuery:
    return query


async def label_event_query(_: OneEach, query: Annotated[LabelEventQuery, Query()]) -> LabelEventQuery:
    return query


async def heatmap_query(_: OneEach, query: Annotated[HeatmapQuery, Query()]) -> HeatmapQuery:
    return query


async def classify_query(_: OneEach, query: Annotated[ClassifyQuery, Query()]) -> ClassifyQuery:
    return query


async def status_query(_: OneEach, query: Annotated[StatusQuery, Query()]) -> StatusQuery:
    return query


EventsParams = Annotated[EventsQuery, Depends(events_query)]
LabelFrameParams = Annotated[LabelFrameQuery, Depends(label_frame_query)]
LabelEventParams = Annotated[LabelEventQuery, Depends(label_event_query)]
HeatmapParams = Annotated[HeatmapQuery, Depends(heatmap_query)]
ClassifyParams = Annotated[ClassifyQuery, Depends(classify_query)]
StatusParams = Annotated[StatusQuery, Depends(status_query)]
