"""One place for every setting, read from ``CHAT_*`` environment variables.

Command-line flags override single fields with ``dataclasses.replace``; nothing
else in the code reads the environment, so the README table is the whole truth.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from app.engine.cpu_features import KERNELS, has_native_bf16

DEFAULT_MODEL = "smollm2"


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a whole number") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class Settings:
    """Everything the server, the CLI and the migrations need to agree on."""

    data_dir: Path
    database_url: str
    cache_dir: Path
    model: str = DEFAULT_MODEL
    host: str = "127.0.0.1"
    port: int = 7860
    max_batch_size: int = 16
    max_queue: int = 64
    rate_limit: int = 10
    rate_period: float = 60.0
    max_input_chars: int = 8000
    max_new_tokens: int = 256
    signup: str = "closed"
    signup_limit: int = 5  # accounts per client address per 10 minutes (open sign-up)
    threads: int = 0
    fast_kernels: bool = True
    kernels: str = "fp32"  # "bf16": the linears' matmuls in bf16 (opt-in, lossy; see README)
    # the embedded engine in a process of its own, so the page's work cannot hold the model back
    # through the interpreter lock (False: a thread of the web process, as before issue 24)
    engine_process: bool = True
    kv_cache_mb: float = 2048.0
    prefill_chunk: int = 0  # 0: the engine's default (a cap of 512 on Llama's mixed steps, else 64)
    prefill_share: float = 0.5  # the part of a mixed step a prompt being read may take while replies stream
    kv_reserve_tokens: int = 4096
    allowed_origins: tuple[str, ...] = ()
    # addresses (or networks) of reverse proxies whose X-Forwarded-For/-Proto are believed; empty: none,
    # not even 127.0.0.1 (uvicorn's default trusts the loopback, and so anything that reaches it)
    trusted_proxies: tuple[str, ...] = ()
    engine_url: str = ""  # empty: the in-process engine; else an inference server (see README, Scaling out)
    engine_protocol: str = "llamacpp"
    engine_model: str = ""  # the model name sent with the OpenAI protocol; default: what the server lists
    engine_wait_seconds: float = 30.0
    engine_timeout: float = 120.0
    metrics_token: str = ""  # empty: /metrics is off; else scrapes send "Authorization: Bearer <token>"
    public_shares: bool = False  # share links readable without a login (CHAT_PUBLIC_SHARES=1)
    # the models file (CHAT_MODELS, see README "Several models"); None: the one model above, as always
    models_file: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("CHAT_DATA_DIR") or "./data").expanduser()
        database_url = env.get("CHAT_DATABASE_URL") or sqlite_url(data_dir / "chat.db")
        cache_dir = Path(env.get("CHAT_CACHE_DIR") or data_dir / "model-cache").expanduser()
        signup = (env.get("CHAT_SIGNUP") or "closed").strip().lower()
        if signup not in {"open", "closed"}:
            raise SystemExit(f"CHAT_SIGNUP must be 'open' or 'closed', not {signup!r}")
        protocol = (env.get("CHAT_ENGINE_PROTOCOL") or "llamacpp").strip().lower()
        if protocol not in {"llamacpp", "openai"}:
            raise SystemExit(f"CHAT_ENGINE_PROTOCOL must be 'llamacpp' or 'openai', not {protocol!r}")
        prefill_share = _float(env, "CHAT_PREFILL_SHARE", 0.5)
        if not 0.0 < prefill_share < 1.0:
            raise SystemExit(f"CHAT_PREFILL_SHARE must be between 0 and 1 (exclusive), not {prefill_share}")
        fast_kernels = _flag(env, "CHAT_FAST_KERNELS", True)
        kernels = _kernels(env, fast_kernels)
        return cls(
            data_dir=data_dir,
            database_url=database_url,
            cache_dir=cache_dir,
            model=env.get("CHAT_MODEL") or DEFAULT_MODEL,
            host=env.get("CHAT_HOST") or "127.0.0.1",
            port=_int(env, "CHAT_PORT", 7860),
            max_batch_size=_int(env, "CHAT_MAX_BATCH_SIZE", 16),
            max_queue=_int(env, "CHAT_MAX_QUEUE", 64),
            rate_limit=_int(env, "CHAT_RATE_LIMIT", 10),
            rate_period=_float(env, "CHAT_RATE_PERIOD", 60.0),
            max_input_chars=_int(env, "CHAT_MAX_INPUT_CHARS", 8000),
            max_new_tokens=_int(env, "CHAT_MAX_NEW_TOKENS", 256),
            signup=signup,
            signup_limit=_int(env, "CHAT_SIGNUP_LIMIT", 5),
            threads=_int(env, "CHAT_THREADS", 0),
            fast_kernels=fast_kernels,
            kernels=kernels,
            engine_process=_flag(env, "CHAT_ENGINE_PROCESS", True),
            kv_cache_mb=_float(env, "CHAT_KV_CACHE_MB", 2048.0),
            prefill_chunk=_int(env, "CHAT_PREFILL_CHUNK", 0),
            prefill_share=prefill_share,
            kv_reserve_tokens=_int(env, "CHAT_KV_RESERVE_TOKENS", 4096),
            allowed_origins=tuple(o.strip() for o in (env.get("CHAT_ALLOWED_ORIGINS") or "").split(",") if o.strip()),
            trusted_proxies=_list(env, "CHAT_TRUSTED_PROXIES"),
            engine_url=(env.get("CHAT_ENGINE_URL") or "").strip(),
            engine_protocol=protocol,
            engine_model=(env.get("CHAT_ENGINE_MODEL") or "").strip(),
            engine_wait_seconds=_float(env, "CHAT_ENGINE_WAIT_SECONDS", 30.0),
            engine_timeout=_float(env, "CHAT_ENGINE_TIMEOUT", 120.0),
            metrics_token=(env.get("CHAT_METRICS_TOKEN") or "").strip(),
            public_shares=_flag(env, "CHAT_PUBLIC_SHARES", False),
            models_file=Path(env["CHAT_MODELS"].strip()).expanduser() if (env.get("CHAT_MODELS") or "").strip()
            else None,
        )


def _kernels(env: Mapping[str, str], fast_kernels: bool) -> str:
    """``CHAT_KERNELS``, refused at start (with the reason) where it could not run as asked."""
    kernels = (env.get("CHAT_KERNELS") or "fp32").strip().lower()
    if kernels not in KERNELS:
        raise SystemExit(f"CHAT_KERNELS must be 'fp32' or 'bf16', not {kernels!r}")
    if kernels == "bf16" and not fast_kernels:
        raise SystemExit("CHAT_KERNELS=bf16 runs on the packed oneDNN kernels: it needs CHAT_FAST_KERNELS on")
    if kernels == "bf16" and not has_native_bf16():
        raise SystemExit(
            "CHAT_KERNELS=bf16 needs a CPU with AVX512_BF16 or AMX (this one has neither, so bf16 would be "
            "slower than fp32): use CHAT_KERNELS=fp32"
        )
    return kernels


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated setting, blanks dropped."""
    return tuple(item.strip() for item in (env.get(name) or "").split(",") if item.strip())


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """An on/off setting: 0, false, no and off turn it off; anything else set turns it on."""
    value = (env.get(name) or "").strip().lower()
    if not value:
        return default
    return value not in {"0", "false", "no", "off"}


def sqlite_url(path: Path) -> str:
    """The async SQLite URL for a file path (absolute, so a changed cwd cannot split the data)."""
    return f"sqlite+aiosqlite:///{path.expanduser().resolve()}"
