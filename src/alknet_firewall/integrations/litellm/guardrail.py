"""The guardrail class and its LiteLLM hooks (configuration: :mod:`.settings`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from fastapi import HTTPException
from litellm.integrations.custom_guardrail import CustomGuardrail
from litellm.types.guardrails import GuardrailEventHooks
from litellm.types.proxy.guardrails.guardrail_hooks.base import GuardrailConfigModel

from ... import telemetry
from ...config import PolicySettings, Settings
from ...errors import BadInputError, FirewallClosedError, FirewallError, OverloadError
from ...firewall import Firewall
from ...verdict import Verdict
from .. import openai_errors
from ..preflight import check_screening
from ._shared import get_firewall
from .policy import PolicySource
from .policy import select_policy as _select_policy
from .records import records, remember, status_for, worst
from .settings import DEFAULT_METADATA_KEY, AlknetGuardrailParams, build_settings
from .subjects import request_subject, response_text, user_text_messages

if TYPE_CHECKING:  # pragma: no cover
    from litellm.caching import DualCache
    from litellm.proxy._types import UserAPIKeyAuth
    from litellm.types.utils import GenericGuardrailAPIInputs

__all__ = ["PROVIDER", "AlknetFirewallConfigModel", "AlknetFirewallGuardrail"]

log = logging.getLogger(__name__)

#: ``guardrail_provider`` in LiteLLM's guardrail logging.
PROVIDER = "alknet_firewall"

_SUPPORTED_HOOKS = [
    GuardrailEventHooks.pre_call,
    GuardrailEventHooks.during_call,
    GuardrailEventHooks.post_call,
    GuardrailEventHooks.logging_only,
]


#: Call types whose unscreenable input (token ids) is let through unscreened: embeddings.
_UNSCREENED_CALLS = frozenset({"embedding", "aembedding"})


class AlknetFirewallConfigModel(AlknetGuardrailParams, GuardrailConfigModel):  # type: ignore[misc]
    """:class:`AlknetGuardrailParams` on LiteLLM's ``GuardrailConfigModel`` base, as
    ``get_config_model()`` returns it to the proxy's UI."""


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
        # Fail fast at proxy start-up on invalid settings, a missing model package, backend or
        # codebook (no model is loaded here): a proxy that cannot screen must not start.
        try:
            check_screening(self.settings())
        except FirewallError as exc:
            log.error("alknet-firewall cannot screen; the proxy must not start: %s", exc)
            raise

    @classmethod
    def get_supported_event_hooks(cls) -> list[GuardrailEventHooks]:
        return list(_SUPPORTED_HOOKS)

    @staticmethod
    def get_config_model() -> type[GuardrailConfigModel] | None:
        return AlknetFirewallConfigModel

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
    ) -> tuple[str, PolicySource]:
        """``(policy, source)`` for a request (:func:`.policy.select_policy` with this
        guardrail's tables)."""
        return _select_policy(
            user_api_key_dict,
            data,
            default_policy=self.settings().default_policy,
            metadata_key=self.metadata_key,
            key_policies=self.key_policies,
            team_policies=self.team_policies,
            request_policies=self.request_policies,
        )

    # -- screening -----------------------------------------------------------------------------
    def _fail_verdict(self, exc: BaseException, policy: str) -> Verdict:
        """The fail-mode verdict when no firewall could screen (construction failed)."""
        settings = self.settings()
        pol: PolicySettings = settings.policies.get(policy) or settings.policy()
        return Verdict.failed(exc, policy, pol)

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
            # LiteLLM's "otel" callback passes the request's span: screen under it.
            with telemetry.under_span(getattr(user_api_key_dict, "parent_otel_span", None)):
                verdict = await fw.ascreen(subject, policy=policy)
        except (BadInputError, OverloadError, FirewallClosedError) as exc:
            return self._refuse(data, exc, policy, source, event_type, t0, may_block=may_block)
        except Exception as exc:  # construction failure, unknown policy: the fail mode decides
            log.error("alknet-firewall could not screen (%s): %s", policy, exc)
            verdict = self._fail_verdict(exc, policy)
        self._record(data, verdict, source, event_type, t0)
        if verdict.blocked and may_block:
            raise self._http_exception(openai_errors.blocked(verdict), verdict)
        return verdict

    def _refuse(
        self,
        data: dict[str, Any],
        exc: FirewallError,
        policy: str,
        source: PolicySource,
        event_type: GuardrailEventHooks | None,
        t0: float,
        *,
        may_block: bool,
    ) -> Verdict:
        """A request the firewall refused to screen (bad input, overload, closed): recorded,
        then ``HTTPException``, or (``may_block=False``) passed, flagged, with the error."""
        self._record_error(data, exc, policy, source, event_type, t0)
        if not may_block:
            flagged = Verdict.failed(exc, policy, fail_mode="open")
            remember(data, flagged.to_dict())
            return flagged
        raise self._http_exception(openai_errors.from_exception(exc)) from None

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
        remember(data, record)
        t1 = time.time()
        self.add_standard_logging_guardrail_information_to_request_data(
            guardrail_json_response={**record, "policy_source": source},
            request_data=data,
            guardrail_status=status_for(verdict),
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

    def _not_run(self, data: dict[str, Any], why: str, event_type: GuardrailEventHooks) -> None:
        self.add_standard_logging_guardrail_information_to_request_data(
            guardrail_json_response=why,
            request_data=data,
            guardrail_status="not_run",
            guardrail_provider=PROVIDER,
            event_type=event_type,
        )

    async def _screen_request(
        self,
        data: dict[str, Any],
        user_api_key_dict: UserAPIKeyAuth,
        call_type: Any,
        event_type: GuardrailEventHooks,
    ) -> None:
        """Every text field of the request (:func:`.subjects.request_subject`), screened before
        (``pre_call``) or beside (``during_call``) the model call: one path for both hooks."""
        t0 = time.time()
        try:
            subject = request_subject(data)
        except BadInputError as exc:
            if str(getattr(call_type, "value", call_type)) in _UNSCREENED_CALLS:
                # token ids for an embedding: nothing a model follows as instructions
                self._not_run(data, f"nothing to screen for {call_type}: {exc}", event_type)
                return
            policy, source = self.select_policy(user_api_key_dict, data)
            may_block = not self.never_blocks(policy)
            self._refuse(data, exc, policy, source, event_type, t0, may_block=may_block)
            return
        if subject is None:
            self._not_run(data, f"no messages to screen for {call_type}", event_type)
            return
        await self.screen(data, subject, user_api_key_dict, event_type)

    # -- LiteLLM hooks -------------------------------------------------------------------------
    async def async_pre_call_hook(
        self,
        user_api_key_dict: UserAPIKeyAuth,
        cache: DualCache,
        data: dict,
        call_type: Any,
    ) -> dict | None:
        await self._screen_request(data, user_api_key_dict, call_type, GuardrailEventHooks.pre_call)
        return None

    async def async_moderation_hook(
        self,
        data: dict,
        user_api_key_dict: UserAPIKeyAuth,
        call_type: Any,
    ) -> None:
        await self._screen_request(
            data, user_api_key_dict, call_type, GuardrailEventHooks.during_call
        )

    async def async_post_call_success_hook(
        self,
        data: dict,
        user_api_key_dict: UserAPIKeyAuth,
        response: Any,
    ) -> Any:
        text = response_text(response)
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
            subject = list(structured) if structured else user_text_messages(texts)
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
        worst_record = worst(records(data))
        if worst_record is None:
            return None
        headers = Verdict.from_dict(worst_record).headers()
        headers["x-alknet-firewall-verdicts"] = str(len(records(data)))
        return headers
