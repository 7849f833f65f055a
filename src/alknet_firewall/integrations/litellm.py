"""LiteLLM proxy guardrail: screens requests with alknet-firewall before (or while) they reach
the model.

In the proxy's ``config.yaml``::

    guardrails:
      - guardrail_name: alknet-firewall
        litellm_params:
          guardrail: alknet_firewall.integrations.litellm.AlknetFirewallGuardrail
          mode: pre_call            # or during_call, post_call, logging_only, or a list
          default_on: true
          policy: default           # every other key configures the firewall (see below)

LiteLLM builds the guardrail with every ``litellm_params`` key except ``guardrail``, ``mode``,
``default_on`` and ``stream_scope`` as a keyword argument. The keys read here:

``config_path``
    alknet-firewall YAML settings file (default: ``$ALKNET_FIREWALL_CONFIG``, else defaults and
    ``ALKNET_FIREWALL_*`` environment variables).
``codebook``
    Codebook file (``detection.codebook``).
``policy``
    Policy used when no key/team rule selects one (``default_policy``).
``policies``
    Policy definitions merged into the settings' ``policies`` (name -> PolicySettings fields).
``fail_mode``, ``roles``, ``monitor``
    Applied to every policy of this guardrail. ``monitor: true`` never blocks: a block becomes a
    flag, and bad-input/overload errors are logged, not returned.
``key_policies``, ``team_policies``
    Policy by key alias or hashed key / by team id or team alias.
``metadata_key``
    Key and team metadata field naming a policy (default ``alknet_policy``).
``request_policies``
    Policies a client may pick itself with ``metadata.alknet_policy`` in the request body
    (default: none).
``firewall_settings``
    Any other settings, nested as in the YAML file (``pool``, ``model``, ...).
``response_headers``
    Add ``x-alknet-firewall-*`` headers to responses (default true).

One :class:`~alknet_firewall.firewall.Firewall` is built per process and per distinct settings,
lazily on first use, in a thread (never on the event loop), and shared by every guardrail
instance with the same settings.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from fastapi import HTTPException
from litellm.integrations.custom_guardrail import CustomGuardrail
from litellm.litellm_core_utils.core_helpers import get_or_create_metadata_bucket
from litellm.types.guardrails import GuardrailEventHooks
from litellm.types.utils import CallTypes

from ..config import PolicySettings, Settings, load_settings
from ..errors import BadInputError, FirewallClosedError, FirewallError, OverloadError
from ..firewall import Firewall, Verdict
from . import openai_errors

if TYPE_CHECKING:  # pragma: no cover
    from litellm.caching import DualCache
    from litellm.proxy._types import UserAPIKeyAuth
    from litellm.types.utils import GenericGuardrailAPIInputs

log = logging.getLogger("alknet_firewall.litellm")

#: ``guardrail_provider`` in LiteLLM's guardrail logging.
PROVIDER = "alknet_firewall"
#: Key and team metadata field that names a policy.
DEFAULT_METADATA_KEY = "alknet_policy"
#: Request metadata key under which this request's verdicts are kept for the response headers.
VERDICTS_KEY = "alknet_firewall_verdicts"
#: Seconds before a failed firewall construction is tried again.
RETRY_BUILD_AFTER_S = 10.0

_SUPPORTED_HOOKS = [
    GuardrailEventHooks.pre_call,
    GuardrailEventHooks.during_call,
    GuardrailEventHooks.post_call,
    GuardrailEventHooks.logging_only,
]
_ACTION_RANK = {"allow": 0, "flag": 1, "block": 2}


# --------------------------------------------------------------------------------------------
# One firewall per process and settings
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Cell:
    future: concurrent.futures.Future[Firewall]
    failed_at: float | None = None


_CELLS: dict[str, _Cell] = {}
_CELLS_LOCK = threading.Lock()


def _settings_key(settings: Settings) -> str:
    return settings.model_dump_json()


def _build(settings: Settings, cell: _Cell) -> None:
    try:
        fw = Firewall(settings)
    except BaseException as exc:  # any failure is reported to every waiter
        log.error("alknet-firewall could not be built: %s", exc)
        cell.failed_at = time.monotonic()
        cell.future.set_exception(exc)
    else:
        cell.future.set_result(fw)


async def get_firewall(settings: Settings) -> Firewall:
    """The process's firewall for ``settings``; the first call builds it in a thread.

    Concurrent callers share one construction; a cancelled caller does not cancel it. A failed
    construction is retried after :data:`RETRY_BUILD_AFTER_S` seconds.
    """
    key = _settings_key(settings)
    with _CELLS_LOCK:
        cell = _CELLS.get(key)
        if (
            cell is not None
            and cell.failed_at is not None
            and time.monotonic() - cell.failed_at >= RETRY_BUILD_AFTER_S
        ):
            cell = None
        start = cell is None
        if cell is None:
            cell = _Cell(concurrent.futures.Future())
            _CELLS[key] = cell
    if start:
        # A dedicated thread rather than the loop's executor: construction takes seconds and
        # must finish (and be cached) even when the request that started it is cancelled.
        threading.Thread(
            target=_build, args=(settings, cell), name="alknet-firewall-load", daemon=True
        ).start()
    if cell.future.done():
        return cell.future.result()
    return await asyncio.shield(asyncio.wrap_future(cell.future))


def close_firewalls(timeout: float = 30.0) -> None:
    """Close and forget every firewall built here (tests, hot reload)."""
    with _CELLS_LOCK:
        cells = list(_CELLS.values())
        _CELLS.clear()
    for cell in cells:
        if cell.future.done() and cell.future.exception() is None:
            cell.future.result().close(timeout)


def build_settings(
    *,
    config_path: str | None = None,
    codebook: str | None = None,
    policy: str | None = None,
    policies: Mapping[str, Any] | None = None,
    fail_mode: str | None = None,
    roles: Sequence[str] | None = None,
    monitor: bool | None = None,
    firewall_settings: Mapping[str, Any] | None = None,
) -> Settings:
    """Firewall settings from guardrail parameters (see the module docstring).

    Raises :class:`~alknet_firewall.errors.ConfigurationError` naming the invalid field.
    """
    overrides: dict[str, Any] = copy.deepcopy(dict(firewall_settings or {}))
    if codebook:
        overrides["detection"] = {**overrides.get("detection", {}), "codebook": codebook}
    base = load_settings(config_path, **overrides)
    if not (
        policies or policy or fail_mode is not None or roles is not None or monitor is not None
    ):
        return base
    # Policies: those of the file/defaults plus ``policies``, then the per-guardrail fields on
    # each; loaded again so that everything is validated (and errors name the field).
    specs: dict[str, Any] = {n: p.model_dump(mode="json") for n, p in base.policies.items()}
    specs.update({n: dict(spec or {}) for n, spec in (policies or {}).items()})
    update: dict[str, Any] = {}
    if fail_mode is not None:
        update["fail_mode"] = fail_mode
    if roles is not None:
        update["roles"] = [roles] if isinstance(roles, str) else list(roles)
    if monitor is not None:
        update["monitor"] = bool(monitor)
    final = {**overrides, "policies": {n: {**spec, **update} for n, spec in specs.items()}}
    if policy:
        final["default_policy"] = policy
    return load_settings(config_path, **final)


# --------------------------------------------------------------------------------------------
# Verdict records kept on the request (for headers) and in LiteLLM's guardrail logging
# --------------------------------------------------------------------------------------------
class _VerdictRecords(list):  # type: ignore[type-arg]
    """A list only this module creates: a client cannot forge it through request JSON."""


def _records(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    for key in ("metadata", "litellm_metadata"):
        bucket = data.get(key)
        if isinstance(bucket, Mapping):
            recs = bucket.get(VERDICTS_KEY)
            if isinstance(recs, _VerdictRecords):
                return list(recs)
    return []


def _remember(data: dict[str, Any], record: dict[str, Any]) -> None:
    _, bucket = get_or_create_metadata_bucket(data)
    recs = bucket.get(VERDICTS_KEY)
    if not isinstance(recs, _VerdictRecords):
        recs = _VerdictRecords()
        bucket[VERDICTS_KEY] = recs
    recs.append(record)


def _worst(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    best = None
    for rec in records:
        rank = (_ACTION_RANK.get(rec.get("action", "allow"), 0), rec.get("score", 0.0))
        if best is None or rank > best[0]:
            best = (rank, rec)
    return best[1] if best else None


def _status_for(verdict: Verdict) -> str:
    if verdict.error_code:
        return "guardrail_failed_to_respond"
    return {"block": "guardrail_intervened", "flag": "guardrail_flagged"}.get(
        verdict.action, "success"
    )


def _user_text_messages(texts: Sequence[str]) -> list[dict[str, str]]:
    return [{"role": "user", "content": t} for t in texts if isinstance(t, str)]


def _response_text(response: Any) -> str | None:
    """Assistant text (content and tool-call arguments) of a chat completion response."""
    choices = getattr(response, "choices", None)
    if choices is None and isinstance(response, Mapping):
        choices = response.get("choices")
    if not choices:
        return None
    parts: list[str] = []
    for choice in choices:
        msg = getattr(choice, "message", None)
        if msg is None and isinstance(choice, Mapping):
            msg = choice.get("message")
        if msg is None:
            continue
        get = msg.get if isinstance(msg, Mapping) else lambda k, m=msg: getattr(m, k, None)
        content = get("content")
        if isinstance(content, str):
            parts.append(content)
        for call in get("tool_calls") or []:
            fn = (
                call.get("function")
                if isinstance(call, Mapping)
                else getattr(call, "function", None)
            )
            args = (
                fn.get("arguments") if isinstance(fn, Mapping) else getattr(fn, "arguments", None)
            )
            if isinstance(args, str):
                parts.append(args)
    text = "\n".join(p for p in parts if p)
    return text or None


# --------------------------------------------------------------------------------------------
# The guardrail
# --------------------------------------------------------------------------------------------
class AlknetFirewallGuardrail(CustomGuardrail):
    """LiteLLM ``CustomGuardrail`` that screens chat input with alknet-firewall.

    ``pre_call`` and ``during_call`` screen the request's messages (``during_call`` beside the
    model call); ``post_call`` screens the model's answer; ``logging_only`` screens a copy of
    the logged call and never affects the response. A ``block`` verdict raises
    ``HTTPException(400)`` whose detail carries the verdict; ``flag`` and ``allow`` pass. Every
    verdict goes to LiteLLM's guardrail logging and to ``x-alknet-firewall-*`` response headers.
    """

    # The proxy runs this class's own hooks for every event; apply_guardrail only serves
    # logging_only scans and the /guardrails/apply_guardrail endpoint.
    use_native_lifecycle_hooks: ClassVar[bool] = True
    records_own_guardrail_information: ClassVar[bool] = True

    def __init__(
        self,
        *,
        config_path: str | None = None,
        codebook: str | None = None,
        policy: str | None = None,
        policies: Mapping[str, Any] | None = None,
        fail_mode: Literal["closed", "open"] | None = None,
        roles: Sequence[str] | None = None,
        monitor: bool | None = None,
        key_policies: Mapping[str, str] | None = None,
        team_policies: Mapping[str, str] | None = None,
        metadata_key: str = DEFAULT_METADATA_KEY,
        request_policies: Sequence[str] | None = None,
        firewall_settings: Mapping[str, Any] | None = None,
        response_headers: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("supported_event_hooks", list(_SUPPORTED_HOOKS))
        kwargs.setdefault("event_hook", GuardrailEventHooks.pre_call)
        super().__init__(**kwargs)
        self.config_path = config_path
        self.codebook = codebook
        self.policy = policy
        self.policies = dict(policies) if policies else None
        self.fail_mode = fail_mode
        self.roles = [roles] if isinstance(roles, str) else (list(roles) if roles else None)
        self.monitor = bool(monitor) if monitor is not None else None
        self.key_policies = dict(key_policies or {})
        self.team_policies = dict(team_policies or {})
        self.metadata_key = metadata_key or DEFAULT_METADATA_KEY
        self.request_policies = list(request_policies or [])
        self.firewall_settings = dict(firewall_settings) if firewall_settings else None
        self.response_headers = bool(response_headers)
        self._settings: Settings | None = None
        # Fail fast at proxy start-up on invalid settings (no model is loaded here).
        self.settings()

    @classmethod
    def get_supported_event_hooks(cls) -> list[GuardrailEventHooks]:
        return list(_SUPPORTED_HOOKS)

    # -- configuration -------------------------------------------------------------------------
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = build_settings(
                config_path=self.config_path,
                codebook=self.codebook,
                policy=self.policy,
                policies=self.policies,
                fail_mode=self.fail_mode,
                roles=self.roles,
                monitor=self.monitor,
                firewall_settings=self.firewall_settings,
            )
        return self._settings

    def update_in_memory_litellm_params(self, litellm_params: Any) -> None:
        super().update_in_memory_litellm_params(litellm_params)
        self._settings = None

    def never_blocks(self, policy: str) -> bool:
        """Monitor mode, for the whole guardrail or for this policy."""
        pol = self.settings().policies.get(policy)
        return bool(self.monitor) or (pol is not None and pol.monitor)

    async def firewall(self) -> Firewall:
        return await get_firewall(self.settings())

    def select_policy(
        self, user_api_key_dict: UserAPIKeyAuth | None, data: Mapping[str, Any] | None = None
    ) -> tuple[str, str]:
        """``(policy, source)`` for a request, first match wins:

        key metadata, team metadata (``metadata_key``), ``key_policies`` (key alias, then
        hashed key), ``team_policies`` (team id, then team alias), the request's
        ``metadata.<metadata_key>`` if listed in ``request_policies``, then the default.
        """
        data = data or {}

        def attr(name: str, stamped_name: str) -> Any:
            # The key the proxy authenticated, or (no key object: logging_only and the
            # apply-guardrail API) what the proxy stamped on the request's metadata.
            if user_api_key_dict is not None:
                return getattr(user_api_key_dict, name, None)
            for bucket_name in ("metadata", "litellm_metadata"):
                bucket = data.get(bucket_name)
                if isinstance(bucket, Mapping) and bucket.get(stamped_name):
                    return bucket[stamped_name]
            return None

        mk = self.metadata_key
        for source, meta in (
            ("key_metadata", attr("metadata", "user_api_key_metadata")),
            ("team_metadata", attr("team_metadata", "user_api_key_team_metadata")),
        ):
            if isinstance(meta, Mapping) and isinstance(meta.get(mk), str) and meta[mk]:
                return meta[mk], source
        for source, table, names in (
            (
                "key_policies",
                self.key_policies,
                (
                    attr("key_alias", "user_api_key_alias"),
                    attr("api_key", "user_api_key_hash"),
                    attr("token", "user_api_key_hash"),
                ),
            ),
            (
                "team_policies",
                self.team_policies,
                (
                    attr("team_id", "user_api_key_team_id"),
                    attr("team_alias", "user_api_key_team_alias"),
                ),
            ),
        ):
            for name in names:
                if isinstance(name, str) and name in table:
                    return table[name], source
        if self.request_policies:
            body_meta = data.get("metadata")
            wanted = body_meta.get(mk) if isinstance(body_meta, Mapping) else None
            if isinstance(wanted, str) and wanted:
                if wanted in self.request_policies:
                    return wanted, "request"
                log.warning("request asked for policy %r, not in request_policies; ignored", wanted)
        return self.settings().default_policy, "default"

    # -- screening -----------------------------------------------------------------------------
    def _fail_verdict(self, exc: BaseException, policy: str) -> Verdict:
        """The fail-mode verdict when no firewall could screen (construction failed)."""
        settings = self.settings()
        pol: PolicySettings = settings.policies.get(policy) or settings.policy()
        closed = pol.fail_mode == "closed"
        return Verdict(
            action="block" if closed and not pol.monitor else "flag",
            level="critical" if closed else "notice",
            score=1.0 if closed else 0.0,
            signals={},
            policy=policy,
            error=f"{exc.__class__.__name__}: {exc}",
            error_code=exc.code if isinstance(exc, FirewallError) else "internal_error",
        )

    async def screen(
        self,
        data: dict[str, Any],
        subject: str | Sequence[Mapping[str, Any]],
        user_api_key_dict: UserAPIKeyAuth | None,
        event_type: GuardrailEventHooks | None,
        *,
        may_block: bool = True,
    ) -> Verdict:
        """Screen ``subject``, record the verdict, and raise ``HTTPException`` when the request
        must not go on (never in monitor mode or with ``may_block=False``)."""
        t0 = time.time()
        policy, source = self.select_policy(user_api_key_dict, data)
        may_block = may_block and not self.never_blocks(policy)
        try:
            fw = await self.firewall()
            verdict = await fw.ascreen(subject, policy=policy)
        except (BadInputError, OverloadError, FirewallClosedError) as exc:
            self._record_error(data, exc, policy, source, event_type, t0)
            if not may_block:  # pass, flagged, with the error in the headers
                flagged = Verdict(
                    action="flag", level="notice", score=0.0, signals={}, policy=policy,
                    error=f"{exc.__class__.__name__}: {exc}", error_code=exc.code,
                )  # fmt: skip
                _remember(data, flagged.to_dict())
                return flagged
            reply = openai_errors.from_exception(exc)
            raise self._http_exception(reply) from None
        except Exception as exc:  # construction failure, unknown policy: the fail mode decides
            log.error("alknet-firewall could not screen (%s): %s", policy, exc)
            verdict = self._fail_verdict(exc, policy)
        self._record(data, verdict, source, event_type, t0)
        if verdict.blocked and may_block:
            raise self._http_exception(openai_errors.blocked(verdict), verdict)
        return verdict

    def _http_exception(
        self, reply: openai_errors.ErrorReply, verdict: Verdict | None = None
    ) -> HTTPException:
        err = dict(reply.body["error"])
        message = err.pop("message")
        if verdict is not None:  # LiteLLM's violation_message_template, if configured
            message = self.render_violation_message(
                message,
                {
                    "action": verdict.action,
                    "level": verdict.level,
                    "signal": verdict.signal or "",
                    "score": f"{verdict.score:.2f}",
                    "policy": verdict.policy,
                },
            )
        # LiteLLM serialises an HTTPException detail into the OpenAI error body: a string
        # "error" becomes error.message and the whole detail error.provider_specific_fields.
        detail = {"error": message, **err}
        return HTTPException(status_code=reply.status, detail=detail, headers=dict(reply.headers))

    def _record(
        self,
        data: dict[str, Any],
        verdict: Verdict,
        source: str,
        event_type: GuardrailEventHooks | None,
        t0: float,
    ) -> None:
        record = verdict.to_dict()
        _remember(data, record)
        t1 = time.time()
        self.add_standard_logging_guardrail_information_to_request_data(
            guardrail_json_response={**record, "policy_source": source},
            request_data=data,
            guardrail_status=_status_for(verdict),
            start_time=t0,
            end_time=t1,
            duration=t1 - t0,
            guardrail_provider=PROVIDER,
            event_type=event_type,
            tracing_detail={
                "detection_method": "activation_codebook",
                "confidence_score": round(verdict.score, 6),
                "risk_score": round(verdict.score, 6),
                "violation_categories": [verdict.signal] if verdict.signal else [],
                "guardrail_action": verdict.action,
                "policy_template": verdict.policy,
            },
        )
        level = logging.WARNING if verdict.action != "allow" else logging.INFO
        log.log(
            level,
            "verdict %s (%s %s score=%.3f policy=%s via %s, %s)",
            verdict.action,
            verdict.level,
            verdict.signal or "-",
            verdict.score,
            verdict.policy,
            source,
            getattr(event_type, "value", event_type) or "apply_guardrail",
            extra={
                "guardrail": self.guardrail_name,
                "action": verdict.action,
                "level": verdict.level,
                "score": round(verdict.score, 4),
                "signal": verdict.signal,
                "policy": verdict.policy,
                "policy_source": source,
                "error_code": verdict.error_code,
                "litellm_call_id": data.get("litellm_call_id"),
            },
        )

    def _record_error(
        self,
        data: dict[str, Any],
        exc: FirewallError,
        policy: str,
        source: str,
        event_type: GuardrailEventHooks | None,
        t0: float,
    ) -> None:
        t1 = time.time()
        self.add_standard_logging_guardrail_information_to_request_data(
            guardrail_json_response={
                "error": str(exc),
                "error_code": exc.code,
                "policy": policy,
                "policy_source": source,
            },
            request_data=data,
            guardrail_status="guardrail_failed_to_respond",
            start_time=t0,
            end_time=t1,
            duration=t1 - t0,
            guardrail_provider=PROVIDER,
            event_type=event_type,
        )
        log.warning(
            "screening refused (%s): %s",
            exc.code,
            exc,
            extra={"guardrail": self.guardrail_name, "error_code": exc.code, "policy": policy},
        )

    def _request_subject(
        self, data: dict[str, Any], call_type: str | None
    ) -> list[Mapping[str, Any]] | str | None:
        messages = None
        if call_type:
            try:
                messages = self.get_guardrails_messages_for_call_type(CallTypes(call_type), data)
            except ValueError:
                messages = None
        if messages is None:
            messages = data.get("messages")
        if isinstance(messages, list):
            return messages
        for key in ("prompt", "input"):
            value = data.get(key)
            if isinstance(value, str):
                return _user_text_messages([value])
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return _user_text_messages(value)
        return None

    def _not_run(self, data: dict[str, Any], why: str, event_type: GuardrailEventHooks) -> None:
        self.add_standard_logging_guardrail_information_to_request_data(
            guardrail_json_response=why,
            request_data=data,
            guardrail_status="not_run",
            guardrail_provider=PROVIDER,
            event_type=event_type,
        )

    # -- LiteLLM hooks -------------------------------------------------------------------------
    async def async_pre_call_hook(
        self,
        user_api_key_dict: UserAPIKeyAuth,
        cache: DualCache,
        data: dict,
        call_type: Any,
    ) -> dict | None:
        subject = self._request_subject(data, call_type)
        if subject is None:
            self._not_run(
                data, f"no messages to screen for {call_type}", GuardrailEventHooks.pre_call
            )
            return None
        await self.screen(data, subject, user_api_key_dict, GuardrailEventHooks.pre_call)
        return None

    async def async_moderation_hook(
        self,
        data: dict,
        user_api_key_dict: UserAPIKeyAuth,
        call_type: Any,
    ) -> None:
        subject = self._request_subject(data, call_type)
        if subject is None:
            self._not_run(
                data, f"no messages to screen for {call_type}", GuardrailEventHooks.during_call
            )
            return None
        await self.screen(data, subject, user_api_key_dict, GuardrailEventHooks.during_call)
        return None

    async def async_post_call_success_hook(
        self,
        data: dict,
        user_api_key_dict: UserAPIKeyAuth,
        response: Any,
    ) -> Any:
        text = _response_text(response)
        if text is None:
            self._not_run(data, "no assistant text in the response", GuardrailEventHooks.post_call)
            return None
        await self.screen(data, text, user_api_key_dict, GuardrailEventHooks.post_call)
        return None

    async def apply_guardrail(
        self,
        inputs: GenericGuardrailAPIInputs,
        request_data: dict,
        input_type: Literal["request", "response"],
        logging_obj: Any = None,
    ) -> GenericGuardrailAPIInputs:
        """Screen LiteLLM's generic inputs (``logging_only`` scans, the apply-guardrail API)."""
        texts = [t for t in inputs.get("texts") or [] if isinstance(t, str)]
        subject: str | list[Mapping[str, Any]]
        if input_type == "response":
            subject = "\n".join(texts)
        else:
            structured = inputs.get("structured_messages")
            subject = list(structured) if structured else _user_text_messages(texts)
        if not subject:
            return inputs
        event = (
            GuardrailEventHooks.logging_only
            if self._event_hook_is_event_type(GuardrailEventHooks.logging_only)
            else None
        )
        # A logging_only scan runs after the response was sent: there is nothing to block.
        await self.screen(request_data, subject, None, event, may_block=event is None)
        return inputs

    async def async_post_call_response_headers_hook(
        self,
        data: dict,
        user_api_key_dict: UserAPIKeyAuth,
        response: Any,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, Any] | None = None,
    ) -> dict[str, str] | None:
        """``x-alknet-firewall-*`` headers of the request's most severe verdict (success or
        failure responses). Every instance answers the same, so the merge order is moot."""
        if not self.response_headers:
            return None
        worst = _worst(_records(data))
        if worst is None:
            return None
        headers = Verdict.from_dict(worst).headers()
        headers["x-alknet-firewall-verdicts"] = str(len(_records(data)))
        return headers
