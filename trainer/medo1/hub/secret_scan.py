"""Credentials must not leave the machine: every uploaded file, name and commit message is scanned as a reader would
decode it; a finding names file, line and key, never the value (see `find_secrets` and `scan_credentials`)."""

from __future__ import annotations

import base64
import codecs
import fnmatch
import functools
import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

# File names that look like credentials anywhere under the directory (matched lower-case).
CREDENTIAL_NAME_PATTERNS = (
    ".env",
    ".env.*",
    "*.env",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    "_netrc",
    "credentials*",
    ".git-credentials",
    "*token*",
    "*secret*",
)
# Tokenizer files legitimately contain "token" in their names.
TOKENIZER_FILE_NAMES = frozenset({"special_tokens_map.json", "added_tokens.json"})

# Shapes of well-known credentials, wherever they appear. The hf_ and sk- prefixes are matched from
# 8 characters on: a short or truncated token is still a leak.
SECRET_PATTERNS = (
    # The literal first, then the look-behind: re then scans for the literal, several times faster.
    ("a Hugging Face token", re.compile(r"hf_(?<![A-Za-z0-9]hf_)[A-Za-z0-9]{8,}")),
    ("an OpenAI-style key", re.compile(r"sk-(?<![A-Za-z0-9]sk-)[A-Za-z0-9_-]{8,}")),
    ("an AWS access key", re.compile(r"AKIA[0-9A-Z]{16}")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
)
# A value under a secret-like key: JSON `"api_key": "..."`, YAML `token: ...`, env `SECRET=...`. Matched
# against the ASCII-lower-cased text (`_ascii_folded`), several times faster than a case-insensitive pattern.
SECRET_KEY_WORDS = r"api[_-]?key|apikey|access[_-]?key|auth[_-]?key|token|secret|password|passwd|credentials?"
SECRET_ASSIGNMENT = re.compile(
    rf"(?P<word>{SECRET_KEY_WORDS})[\"']?[ \t]*[:=][ \t]*[\"']?(?P<value>[a-z0-9+/=_.~-]{{16,}})(?![a-z0-9+/=_.~-])"
)
KEY_CHARS = re.compile(r"[A-Za-z0-9_.-]*$")
# Opaque tokens by where they stand (any shape, judged by length and entropy like a value under a secret key): a
# URL's user-info (`https://TOKEN@host`, `postgres://user:PASSWORD@db` is detect-secrets' BasicAuth rule) and an
# HTTP bearer credential.
PLACED_TOKENS = (
    ("a token in a URL's user-info", re.compile(r"://(?:[^\s:/@]*:)?(?P<value>[A-Za-z0-9._~%+-]{16,})@")),
    ("a bearer token", re.compile(r"(?i:bearer)\s+(?P<value>[A-Za-z0-9._~+/-]{16,}=*)")),
)
MIN_SECRET_VALUE_LENGTH = 16
MIN_SECRET_ENTROPY_BITS = 3.0
# Environment variables whose live values must never leave the machine, plus any variable whose name
# ends like a credential's. Values shorter than MIN_ENV_SECRET_LENGTH are too common to search for.
SECRET_ENV_NAMES = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_API_TOKEN",
    "OPENAI_API_KEY",
    "WANDB_API_KEY",
    "ANTHROPIC_API_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "KFP_TOKEN",
)
SECRET_ENV_SUFFIXES = ("_TOKEN", "_API_KEY", "_SECRET", "_SECRET_KEY", "_PASSWORD", "_ACCESS_KEY")
MIN_ENV_SECRET_LENGTH = 8
# Binary files scanned as UTF-8 text (their strings are UTF-8 bytes: sentencepiece pieces), never by encoding sniffing.
BINARY_TEXT_NAMES = ("tokenizer.model",)
SCAN_CHUNK_BYTES = 1 << 20
SCAN_OVERLAP_CHARS = 4096
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
# safetensors dtypes whose tensors can hold text bytes: scanned like a text file.
SAFETENSORS_BYTE_DTYPES = frozenset({"U8", "I8", "BOOL"})
# JSON escapes and URL percent-escapes that can spell token characters or URL syntax in a way the text as written
# does not show (`\u005f`, `https:\/\/`, `hf%5F`); the text around each is scanned again with them undone.
REVEALING_ESCAPE = re.compile(r"\\u[0-9a-fA-F]{4}|\\/|%[0-9a-fA-F]{2}")
JSON_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|([\"\\/bfnrt]))")
ESCAPE_CONTEXT_CHARS = 512
PERCENT_NEWLINE = re.compile(r"%0[aAdD]")


def _credential_name(name: str) -> bool:
    lower = name.lower()
    if lower.startswith("tokenizer") or lower in TOKENIZER_FILE_NAMES:
        return False
    return any(fnmatch.fnmatchcase(lower, pattern) for pattern in CREDENTIAL_NAME_PATTERNS)


def shannon_entropy(text: str) -> float:
    """Bits per character of `text`'s own character distribution."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def live_secrets() -> dict[str, str]:
    """Environment variable name -> value, for the credentials present in this process."""
    return {
        name: value.strip()
        for name, value in os.environ.items()
        if (name in SECRET_ENV_NAMES or name.upper().endswith(SECRET_ENV_SUFFIXES))
        and len(value.strip()) >= MIN_ENV_SECRET_LENGTH
    }


# detect-secrets' (Yelp, Apache-2.0) rules for the shapes of well-known credentials: each plugin is a regex set kept
# with the scanner (JWT, basic-auth URLs, GitHub / GitLab / Slack / Stripe / npm / PyPI / AWS / Azure / Twilio /
# Discord / Telegram / SendGrid / Mailchimp / Square / IBM / Cloudant / Softlayer / Artifactory tokens, private keys).
# Used through each plugin's `analyze_string` only: no verification request is ever sent. Left out: its keyword and
# high-entropy-string plugins (medo1's own SECRET_ASSIGNMENT rule covers secret-like keys with an entropy bar that
# tokenizer vocabularies pass) and IPPublicDetector (an address is not a credential).
# Each plugin with what a line must hold for its rules to match (a run of 20+ token characters for the tokens and the
# keyword-assignment rules, whose secrets are all that long; a literal prefix for the others): only those lines are
# given to it, which keeps a tokenizer vocabulary to about a second per megabyte (the assignment rules' case-blind
# keyword alternations are slow on long text).
LONG_RUN = r"[A-Za-z0-9+/=_-]{20,}"
DETECT_SECRETS_PLUGINS = (
    ("artifactory", "ArtifactoryDetector", r"AKC|AP[0-9A-F]"),
    ("aws", "AWSKeyDetector", LONG_RUN),
    ("azure_storage_key", "AzureStorageKeyDetector", LONG_RUN),
    ("basic_auth", "BasicAuthDetector", r"://"),
    ("cloudant", "CloudantDetector", LONG_RUN),
    ("discord", "DiscordBotTokenDetector", LONG_RUN),
    ("github_token", "GitHubTokenDetector", LONG_RUN),
    ("gitlab_token", "GitLabTokenDetector", LONG_RUN),
    ("ibm_cloud_iam", "IbmCloudIamDetector", LONG_RUN),
    ("ibm_cos_hmac", "IbmCosHmacDetector", LONG_RUN),
    ("jwt", "JwtTokenDetector", r"eyJ"),
    ("mailchimp", "MailchimpDetector", LONG_RUN),
    ("npm", "NpmDetector", r"_authToken"),
    ("openai", "OpenAIDetector", LONG_RUN),
    ("private_key", "PrivateKeyDetector", r"PRIVATE KEY|PuTTY-User-Key"),
    ("pypi_token", "PypiTokenDetector", LONG_RUN),
    ("sendgrid", "SendGridDetector", LONG_RUN),
    ("slack", "SlackDetector", r"(?i:xox)|hooks\.slack\.com"),
    ("softlayer", "SoftlayerDetector", LONG_RUN),
    ("square_oauth", "SquareOAuthDetector", LONG_RUN),
    ("stripe", "StripeDetector", LONG_RUN),
    ("telegram_token", "TelegramBotTokenDetector", LONG_RUN),
    ("twilio", "TwilioKeyDetector", LONG_RUN),
)
LONG_LINE_CHARS = 2048
CANDIDATE_CONTEXT_CHARS = 256


@functools.cache
def secret_detectors() -> tuple[tuple[re.Pattern, tuple], ...]:
    """(trigger, plugins) pairs, the plugins instantiated once."""
    import importlib

    by_trigger: dict[str, list] = {}
    for module, name, trigger in DETECT_SECRETS_PLUGINS:
        plugin = getattr(importlib.import_module(f"detect_secrets.plugins.{module}"), name)()
        by_trigger.setdefault(trigger, []).append(plugin)
    return tuple((re.compile(trigger), tuple(plugins)) for trigger, plugins in by_trigger.items())


def _candidate_spans(text: str, trigger: re.Pattern) -> list[tuple[int, int]]:
    """Spans of `text` to give the rules of `trigger`: each line holding a match, or, in a line longer than
    LONG_LINE_CHARS (minified JSON), the match with CANDIDATE_CONTEXT_CHARS either side; neighbours merged up to
    LONG_LINE_CHARS (some rules backtrack over a whole line: `//.+/:_authToken`). A match longer than LONG_LINE_CHARS
    (a megabyte of base64) counts by its two ends: the rules' secrets are shorter, and medo1's own patterns and the
    live values are searched through the whole text."""
    spans: list[tuple[int, int]] = []
    for found in trigger.finditer(text):
        ends = [(found.start(), found.end())]
        if found.end() - found.start() > LONG_LINE_CHARS:
            ends = [
                (found.start(), found.start() + CANDIDATE_CONTEXT_CHARS),
                (found.end() - CANDIDATE_CONTEXT_CHARS, found.end()),
            ]
        for match_start, match_end in ends:
            if spans and match_end <= spans[-1][1]:
                continue
            start = text.rfind("\n", max(0, match_start - LONG_LINE_CHARS), match_start) + 1
            end = text.find("\n", match_end, match_end + LONG_LINE_CHARS)
            if start == 0 and match_start > LONG_LINE_CHARS or end == -1 and len(text) > match_end + LONG_LINE_CHARS:
                start = max(0, match_start - CANDIDATE_CONTEXT_CHARS)  # a long line: a window around the match
                end = min(len(text), match_end + CANDIDATE_CONTEXT_CHARS)
            elif end == -1:
                end = len(text)
            if spans and start <= spans[-1][1] and end - spans[-1][0] <= LONG_LINE_CHARS:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:  # a new span (overlapping the last one at most by the context): no rule runs over a megabyte line
                spans.append((start, end))
    return spans


def _detect_secrets_findings(text: str) -> list[tuple[int, str]]:
    found = []
    for trigger, plugins in secret_detectors():
        for start, end in _candidate_spans(text, trigger):
            span = text[start:end]
            for plugin in plugins:
                for secret in plugin.analyze_string(span):
                    at = span.find(secret)
                    found.append((start + max(at, 0), f"what looks like {plugin.secret_type} (detect-secrets)"))
    return found


def _base64_cores(value: str) -> list[str]:
    """Substrings of the base64 (standard and URL-safe) of any text holding `value` at any byte alignment: a live
    token inside a Kubernetes Secret, a Basic auth header or a .dockerconfigjson `auth` still matches."""
    raw = value.encode("utf-8")
    cores = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode("ascii")
        whole = 4 * ((shift + len(raw)) // 3)  # groups made of value bytes only, from the second one when shifted
        core = encoded[4 if shift else 0 : whole]
        if len(core) >= MIN_BASE64_CORE:
            cores += [core, core.replace("+", "-").replace("/", "_")]
    return list(dict.fromkeys(cores))


MIN_BASE64_CORE = 12


def find_secrets(text: str, live: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """(character offset, what) for every secret found in `text`; `what` never holds the secret.

    Refused: the shapes in SECRET_PATTERNS and detect-secrets' rules (DETECT_SECRETS_PLUGINS); the live value
    of any credential variable of this process (`live_secrets`), as written or base64-encoded; an opaque token
    in a URL's user-info or after `Bearer` (PLACED_TOKENS); and a value under a secret-like key (SECRET_KEY_WORDS, e.g.
    `api_key`, `hub_token`, `DB_PASSWORD`) in JSON, YAML or env-style text that is at least
    MIN_SECRET_VALUE_LENGTH (16) characters of [A-Za-z0-9+/=_.~-] (the alphabets of hex, base64
    and URL-safe tokens) with a Shannon entropy of at least MIN_SECRET_ENTROPY_BITS (3.0) bits per
    character. Random hex averages about 3.8 bits, random base64 over 4.5; repeated or
    dictionary-like values (`aaaa...`, `changeme`) stay below, and values with other characters,
    such as tokenizer special tokens (`<|endoftext|>`), never match.
    """
    found = [
        (m.start(), f"what looks like {kind}") for kind, pattern in SECRET_PATTERNS for m in pattern.finditer(text)
    ]
    for name, value in (live_secrets() if live is None else live).items():
        for form, needle in [("", value)] + [(" (base64-encoded)", core) for core in _base64_cores(value)]:
            at = text.find(needle)
            while at != -1:
                found.append((at, f"the live {name} value{form}"))
                at = text.find(needle, at + 1)
    found += _detect_secrets_findings(text)
    for kind, pattern in PLACED_TOKENS:
        for match in pattern.finditer(text):
            value = match.group("value")
            if shannon_entropy(value) >= MIN_SECRET_ENTROPY_BITS:
                found.append((match.start("value"), f"what looks like {kind}"))
    for match in SECRET_ASSIGNMENT.finditer(_ascii_folded(text)):
        value = text[match.start("value") : match.end("value")]
        if len(value) >= MIN_SECRET_VALUE_LENGTH and shannon_entropy(value) >= MIN_SECRET_ENTROPY_BITS:
            key = KEY_CHARS.search(text, max(0, match.start() - 64), match.start()).group()
            word = text[match.start("word") : match.end("word")]
            found.append((match.start(), f"a high-entropy value under key '{key + word}'"))
    return sorted(found)


def _ascii_folded(text: str) -> str:
    """`text` lower-cased with every non-ASCII character as '?': the same length, so offsets carry over."""
    return text.encode("ascii", "replace").decode("ascii").lower()


def _json_unescaped(text: str) -> str:
    """`text` with JSON escapes, then URL percent-escapes, undone; a newline or carriage return they spell becomes
    a space, so the text keeps its line count (for the line numbers of what is found)."""

    def undo(match: re.Match) -> str:
        char = (
            chr(int(match.group(1), 16))
            if match.group(1)
            else {"b": "\b", "f": "\f", "n": " ", "r": " ", "t": "\t"}.get(match.group(2), match.group(2))
        )
        return " " if char in "\r\n" else char

    return unquote(PERCENT_NEWLINE.sub(" ", JSON_ESCAPE.sub(undo, text)))


def _escaped_spans(text: str) -> list[tuple[int, int]]:
    """Merged spans of `text` around its REVEALING_ESCAPEs (ESCAPE_CONTEXT_CHARS either side)."""
    spans: list[tuple[int, int]] = []
    for match in REVEALING_ESCAPE.finditer(text):
        start, end = max(0, match.start() - ESCAPE_CONTEXT_CHARS), match.end() + ESCAPE_CONTEXT_CHARS
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def find_secrets_decoded(text: str, live: dict[str, str]) -> list[tuple[int, str]]:
    """`find_secrets` of `text` as written and, around each escape that can hide one, as a JSON reader decodes it
    (offsets of the latter are the span's start: enough for a line number)."""
    found = find_secrets(text, live)
    for start, end in _escaped_spans(text):
        found += [(start, what) for _, what in find_secrets(_json_unescaped(text[start:end]), live)]
    return found


def text_encoding(head: bytes) -> str:
    """The encoding a JSON reader takes a file starting with `head` to be (RFC 8259 section 8.1, as Python's json
    module detects it): UTF-8, with or without a BOM, UTF-16 or UTF-32 by their BOM or the NUL bytes of ASCII text."""
    return json.detect_encoding(head)


def scan_text_file(path: Path, live: dict[str, str] | None = None, encoding: str | None = None) -> list[str]:
    """Secrets in one file as 'line N: what', read in chunks whatever the file's size, decoded as a reader would
    (`text_encoding`, unless `encoding` is given; undecodable bytes become U+FFFD) and with JSON escapes undone.

    Each chunk is searched together with the end of the previous one (an overlap longer than any
    live secret), so a secret across a chunk boundary is found; a match seen twice is reported once.
    """
    live = live_secrets() if live is None else live
    overlap = max([SCAN_OVERLAP_CHARS] + [2 * len(v) for v in live.values()])
    found: dict[tuple[int, str], None] = {}
    tail, tail_line = "", 1  # the kept end of the previous chunk and the line it starts on
    with path.open("rb") as handle:
        head = handle.read(4)
        handle.seek(0)
        decoder = codecs.getincrementaldecoder(encoding or text_encoding(head))(errors="replace")
        while True:
            raw = handle.read(SCAN_CHUNK_BYTES)
            buffer = tail + decoder.decode(raw, final=not raw)
            for offset, what in find_secrets_decoded(buffer, live):
                found[(tail_line + buffer.count("\n", 0, offset), what)] = None
            if not raw:
                break
            keep = buffer[-overlap:]
            tail_line += buffer.count("\n", 0, len(buffer) - len(keep))
            tail = keep
    return [f"line {line}: {what}" for line, what in found]


def read_safetensors_header(path: Path) -> tuple[str | None, int, dict]:
    """(why the shard cannot be read, or None; header length; header) of a safetensors file."""
    size = path.stat().st_size
    if size == 0:
        return "empty weight file (0 bytes)", 0, {}
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"not a safetensors file ({size} bytes, no header)", 0, {}
        header_len = int.from_bytes(head, "little")
        if header_len > min(size - 8, SAFETENSORS_MAX_HEADER):
            return "not a safetensors file (header length beyond the file)", 0, {}
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "not a safetensors file (header is not JSON)", 0, {}
    if not isinstance(header, dict):
        return "not a safetensors file (header is not an object)", 0, {}
    return None, header_len, header


def check_safetensors(path: Path) -> str | None:
    """Why a weight shard cannot be read (empty, truncated, bad header) or holds bytes no tensor describes (where
    anything could hide), or None when its tensors cover its data exactly, one after another."""
    why, header_len, header = read_safetensors_header(path)
    if why:
        return why
    size = path.stat().st_size
    spans = sorted(
        tuple(t.get("data_offsets", (0, 0))) for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
    )
    if not spans:
        return "holds no tensors"
    data = size - 8 - header_len
    if spans[-1][1] != data:
        return f"truncated or padded: the header describes {8 + header_len + spans[-1][1]} bytes, the file has {size}"
    at = 0
    for begin, end in spans:
        if begin != at or end < begin:
            return f"bytes {8 + header_len + at}-{8 + header_len + begin} are in no tensor (or tensors overlap)"
        at = end
    return None


def scan_safetensors(path: Path, live: dict[str, str]) -> list[str]:
    """Secrets in a safetensors file's header (tensor names and `__metadata__`) and in its byte tensors (U8 / I8 /
    BOOL, which can hold text), as 'header: what' / "tensor 'NAME': what"."""
    _, header_len, header = read_safetensors_header(path)
    with path.open("rb") as handle:
        handle.seek(8)
        text = handle.read(header_len).decode("utf-8")
        problems = [f"header: {what}" for what in dict.fromkeys(w for _, w in find_secrets_decoded(text, live))]
        for name, tensor in header.items():
            if (
                name == "__metadata__"
                or not isinstance(tensor, dict)
                or tensor.get("dtype") not in SAFETENSORS_BYTE_DTYPES
            ):
                continue
            begin, end = tensor["data_offsets"]
            handle.seek(8 + header_len + begin)
            content = handle.read(end - begin).decode("utf-8", errors="replace")
            problems += [
                f"tensor {name!r}: {what}" for what in dict.fromkeys(w for _, w in find_secrets(content, live))
            ]
    return problems


def scan_credentials(model_dir: Path, rel_files: list[str], upload_files: list[str]) -> list[str]:
    """Problems as 'file: why'. Names are checked everywhere; every uploaded file's name and content (a weight
    shard's header and byte tensors; it must also be a readable safetensors file with no stray bytes)."""
    problems = []
    live = live_secrets()
    for rel in rel_files:
        if any(_credential_name(part) for part in rel.split("/")):
            problems.append(f"{rel}: file name looks like a credential")
    for rel in upload_files:  # their names go to the Hub too; shown cut where the secret starts
        for at, what in find_secrets(rel, live):
            problems.append(f"{rel[: at + 3]}***: the file name holds {what.removeprefix('what looks like ')}")
    for rel in upload_files:
        path = model_dir / rel
        try:
            if fnmatch.fnmatchcase(rel, "*.safetensors"):
                why = check_safetensors(path)
                problems += [f"{rel}: {why}"] if why else [f"{rel}: {what}" for what in scan_safetensors(path, live)]
            else:
                binary = any(fnmatch.fnmatchcase(rel, pattern) for pattern in BINARY_TEXT_NAMES)
                problems += [f"{rel}: {finding}" for finding in scan_text_file(path, live, "utf-8" if binary else None)]
        except OSError as exc:
            problems.append(f"{rel}: cannot be read ({exc.strerror})")
    return problems
