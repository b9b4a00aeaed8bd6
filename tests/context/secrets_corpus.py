"""A workspace of realistic secrets (fake values in their real formats) next to ordinary source
files that use the names the secret files define, for the leak tests and
benchmarks/secrets_audit.py.

    build_secrets_corpus(root) -> SecretsCorpus   writes the files; `.secrets` says what each holds

Each `SecretFile` lists the values that must never leave the machine (`needles`): the whole value
and slices of a long one, so that a value cut by a token budget still counts as leaked. Private
keys are real keys (generated with `cryptography`), tokens have their providers' prefixes,
lengths and alphabets, and the JWT is signed, so a rule that checks the format sees what it
would see in a real workspace.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ALNUM = string.ascii_letters + string.digits
BASE64 = ALNUM + "+/"
# A slice this long of a random value cannot occur by chance in a prompt.
NEEDLE_CHARS = 16


@dataclass(frozen=True)
class SecretFile:
    path: str  # relative to the corpus root, posix separators
    kind: str  # what it holds, for reports ("OpenSSH private key", ".env", ...)
    values: tuple[str, ...]  # the secret values in it

    @property
    def needles(self) -> tuple[str, ...]:
        """Strings whose presence anywhere means a leak: each value, and for a long one its start,
        middle and end slices."""
        found: list[str] = []
        for value in self.values:
            found.append(value)
            if len(value) > 2 * NEEDLE_CHARS:
                middle = (len(value) - NEEDLE_CHARS) // 2
                found += [value[:NEEDLE_CHARS], value[middle : middle + NEEDLE_CHARS], value[-NEEDLE_CHARS:]]
        return tuple(dict.fromkeys(found))


@dataclass
class SecretsCorpus:
    root: Path
    secrets: list[SecretFile] = field(default_factory=list)
    ordinary: list[str] = field(default_factory=list)  # source files with no secret, that use the secrets' names

    def leaks_in(self, text: str) -> list[tuple[str, str]]:
        """(secret file, needle) for each needle found in `text`."""
        return [(secret.path, needle) for secret in self.secrets for needle in secret.needles if needle in text]


class _Values:
    """Fake credentials in their real formats, reproducible from a seed (keys aside)."""

    def __init__(self, seed: int):
        self.random = random.Random(seed)

    def chars(self, count: int, alphabet: str = ALNUM) -> str:
        return "".join(self.random.choice(alphabet) for _ in range(count))

    def aws_key_id(self) -> str:
        return "AKIA" + self.chars(16, string.ascii_uppercase + string.digits)

    def aws_secret(self) -> str:
        return self.chars(40, BASE64)

    def github_classic(self) -> str:
        return "ghp_" + self.chars(36)

    def github_fine_grained(self) -> str:
        return f"github_pat_{self.chars(22)}_{self.chars(59)}"

    def slack_bot(self) -> str:
        return f"xoxb-{self.chars(12, string.digits)}-{self.chars(13, string.digits)}-{self.chars(24)}"

    def stripe_live(self, length: int = 24) -> str:
        return "sk_live_" + self.chars(length)

    def npm(self) -> str:
        return "npm_" + self.chars(36)

    def pypi(self) -> str:
        return "pypi-AgEIcHlwaS5vcmc" + self.chars(150, ALNUM + "-_")

    def password(self) -> str:
        return self.chars(20, ALNUM + "!#%^*-_")

    def jwt(self) -> str:
        def encoded(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = encoded(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {"sub": f"user-{self.chars(8, string.digits)}", "scope": "admin", "iat": 1733000000, "exp": 1733086400}
        payload = encoded(json.dumps(claims).encode())
        signature = hmac.new(self.chars(32).encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{encoded(signature)}"


def _pem_lines(pem: str) -> tuple[str, ...]:
    """The base64 lines of a PEM block: the secret part (the armour is public)."""
    return tuple(line for line in pem.splitlines() if line and not line.startswith("-----"))


def _rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode()


def _pkcs8_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def _ec_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode()


def _openssh_pem() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()


def _kubeconfig(token: str, client_key_data: str) -> str:
    return f"""apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==
    server: https://10.0.12.4:6443
  name: prod
contexts:
- context:
    cluster: prod
    user: deployer
  name: prod
current-context: prod
users:
- name: deployer
  user:
    token: {token}
- name: admin
  user:
    client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==
    client-key-data: {client_key_data}
"""


def build_secrets_corpus(root: Path, seed: int = 18) -> SecretsCorpus:
    """Write the corpus under `root` (created) and return what it holds."""
    values = _Values(seed)
    corpus = SecretsCorpus(root)

    def secret(path: str, kind: str, text: str, *secret_values: str) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        assert all(value in text for value in secret_values), path
        corpus.secrets.append(SecretFile(path, kind, secret_values))

    def ordinary(path: str, text: str) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        corpus.ordinary.append(path)

    # --- files that are secrets by name --------------------------------------------------------
    db_password, secret_key, env_stripe = values.password(), values.chars(50, ALNUM + "!@#%^&*(-_=+)"), values.stripe_live()
    secret(
        ".env", ".env",
        f"# local settings, never commit\nDATABASE_URL=postgres://app:{db_password}@db.internal:5432/app\n"
        f"DJANGO_SECRET_KEY='{secret_key}'\nSTRIPE_SECRET_KEY={env_stripe}\nDEBUG=true\n",
        db_password, secret_key, env_stripe,
    )  # fmt: skip
    prod_password, sentry_dsn_key = values.password(), values.chars(32, string.hexdigits.lower())
    secret(
        ".env.production", ".env",
        f"DATABASE_URL=postgres://app:{prod_password}@prod-db.internal:5432/app\n"
        f"SENTRY_DSN=https://{sentry_dsn_key}@o4504.ingest.sentry.io/4504\n",
        prod_password, sentry_dsn_key,
    )  # fmt: skip
    openssh = _openssh_pem()
    secret("deploy/id_ed25519", "OpenSSH private key", openssh, *_pem_lines(openssh))
    rsa_pem = _rsa_pem()
    secret("certs/server.key", "PEM RSA private key", rsa_pem, *_pem_lines(rsa_pem))
    ec_pem = _ec_pem()
    secret("certs/ec_private.pem", "PEM EC private key", ec_pem, *_pem_lines(ec_pem))
    npm_token, legacy_npm = values.npm(), "-".join(values.chars(n, string.hexdigits.lower()) for n in (8, 4, 4, 4, 12))
    secret(
        ".npmrc", ".npmrc",
        f"//registry.npmjs.org/:_authToken={npm_token}\n@corp:registry=https://npm.corp.example/\n"
        f"//npm.corp.example/:_authToken={legacy_npm}\nalways-auth=true\n",
        npm_token, legacy_npm,
    )  # fmt: skip
    pypi_token, testpypi_password = values.pypi(), values.password()
    secret(
        ".pypirc", ".pypirc",
        f"[distutils]\nindex-servers =\n    pypi\n    testpypi\n\n[pypi]\nusername = __token__\npassword = {pypi_token}\n\n"
        f"[testpypi]\nrepository = https://test.pypi.org/legacy/\nusername = release-bot\npassword = {testpypi_password}\n",
        pypi_token, testpypi_password,
    )  # fmt: skip
    netrc_token, ftp_password = values.github_classic(), values.password()
    secret(
        ".netrc", ".netrc",
        f"machine api.github.com\n  login octocat\n  password {netrc_token}\nmachine ftp.example.com login bob password {ftp_password}\n",
        netrc_token, ftp_password,
    )  # fmt: skip
    kube_token = values.chars(43, ALNUM + "-_") + "." + values.chars(16)
    kube_key = base64.b64encode(_ec_pem().encode()).decode()
    secret(".kube/config", "kubeconfig", _kubeconfig(kube_token, kube_key), kube_token, kube_key)
    deploy_token = values.jwt()
    deploy_key = base64.b64encode(_ec_pem().encode()).decode()
    secret("deploy/kubeconfig.yaml", "kubeconfig", _kubeconfig(deploy_token, deploy_key), deploy_token, deploy_key)
    oauth_secret = "GOCSPX-" + values.chars(28, ALNUM + "-_")
    client_id = f"{values.chars(12, string.digits)}-{values.chars(32, string.ascii_lowercase + string.digits)}.apps.googleusercontent.com"
    oauth = {"installed": {"client_id": client_id, "project_id": "billing-prod", "client_secret": oauth_secret, "redirect_uris": ["http://localhost"]}}
    secret("credentials.json", "Google OAuth client secret", json.dumps(oauth, indent=2), oauth_secret)
    aws_id, aws_secret = values.aws_key_id(), values.aws_secret()
    secret(
        ".aws/credentials", "AWS credentials",
        f"[default]\naws_access_key_id = {aws_id}\naws_secret_access_key = {aws_secret}\nregion = eu-west-1\n",
        aws_id, aws_secret,
    )  # fmt: skip
    pat, slack_in_yaml = values.github_fine_grained(), values.slack_bot()
    secret("secrets.yaml", "GitHub and Slack tokens", f"github:\n  token: {pat}\nslack:\n  bot_token: {slack_in_yaml}\n", pat, slack_in_yaml)

    # --- files that are secrets by their contents only -----------------------------------------
    pkcs8 = _pkcs8_pem()
    service_account = {
        "type": "service_account",
        "project_id": "billing-prod",
        "private_key_id": values.chars(40, string.hexdigits.lower()),
        "private_key": pkcs8,
        "client_email": "exporter@billing-prod.iam.gserviceaccount.com",
        "client_id": values.chars(21, string.digits),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    secret("gcp/service-account.json", "GCP service-account JSON", json.dumps(service_account, indent=2), service_account["private_key_id"], *_pem_lines(pkcs8))
    ini_id, ini_secret = values.aws_key_id(), values.aws_secret()
    secret("config/aws.ini", "AWS access key", f"[profile deploy]\naws_access_key_id={ini_id}\naws_secret_access_key={ini_secret}\n", ini_id, ini_secret)
    session_jwt = values.jwt()
    secret("fixtures/session.json", "JWT", json.dumps({"user": "ada", "access_token": session_jwt, "token_type": "Bearer"}), session_jwt)

    # --- secrets inside ordinary source files --------------------------------------------------
    stripe_key = values.stripe_live(99)
    secret(
        "billing/config.py", "Stripe key in Python",
        f'"""Billing settings."""\n\nSTRIPE_API_KEY = "{stripe_key}"\nCURRENCY = "eur"\n\n\n'
        "def charge_customer(customer_id: str, amount_cents: int) -> dict:\n"
        '    """Charge a customer with the live Stripe key."""\n'
        '    return {"customer": customer_id, "amount": amount_cents, "currency": CURRENCY, "key": STRIPE_API_KEY}\n',
        stripe_key,
    )  # fmt: skip
    settings_id, settings_secret = values.aws_key_id(), values.aws_secret()
    secret(
        "app/settings.py", "AWS key in Python",
        f'AWS_ACCESS_KEY_ID = "{settings_id}"\nAWS_SECRET_ACCESS_KEY = "{settings_secret}"\nBUCKET = "invoices"\n\n\n'
        "def s3_upload_target(name: str) -> str:\n    return f\"s3://{BUCKET}/{name}\"\n",
        settings_id, settings_secret,
    )  # fmt: skip
    slack_token = values.slack_bot()
    secret(
        "notify/slack.js", "Slack token in JavaScript",
        f'const SLACK_TOKEN = "{slack_token}";\n\nexport function postSlackMessage(channel, text) {{\n'
        "  return fetch('https://slack.com/api/chat.postMessage', {\n"
        "    method: 'POST', headers: { Authorization: `Bearer ${SLACK_TOKEN}` }, body: JSON.stringify({ channel, text }),\n  });\n}\n",
        slack_token,
    )  # fmt: skip
    release_token = values.github_classic()
    secret(
        "scripts/release.sh", "GitHub token in a shell script",
        f"#!/bin/sh\nset -e\nexport GITHUB_TOKEN={release_token}\ngh release create \"$1\" dist/*\n",
        release_token,
    )  # fmt: skip
    publish_token = values.npm()
    secret(
        "client/publish.ts", "npm token in TypeScript",
        f'const NPM_TOKEN = "{publish_token}";\n\nexport function publishPackage(dir: string): string {{\n'
        "  return `npm publish ${dir} --//registry.npmjs.org/:_authToken=${NPM_TOKEN}`;\n}\n",
        publish_token,
    )  # fmt: skip
    go_key = _ec_pem()
    service_jwt = values.jwt()
    secret(
        "auth/tokens.go", "private key and JWT in Go",
        f'package auth\n\nconst ServiceToken = "{service_jwt}"\n\nconst signingKey = `{go_key}`\n\n'
        "func SigningKey() string {\n\treturn signingKey\n}\n",
        service_jwt, *_pem_lines(go_key),
    )  # fmt: skip
    pat_in_code = values.github_fine_grained()
    secret(
        "tools/github.py", "GitHub token in Python",
        f'GITHUB_PAT = "{pat_in_code}"\n\n\ndef release_headers() -> dict:\n    return {{"Authorization": f"token {{GITHUB_PAT}}"}}\n',
        pat_in_code,
    )  # fmt: skip
    escaped_key = _rsa_pem()
    secret(
        "deploy/keys.py", "private key in a Python string",
        "DEPLOY_KEY = (\n" + "".join(f'    "{line}\\n"\n' for line in escaped_key.splitlines()) + ")\n\n\n"
        "def deploy_key_bytes() -> bytes:\n    return DEPLOY_KEY.encode()\n",
        *_pem_lines(escaped_key),
    )  # fmt: skip

    # --- ordinary code that uses the names the secret files define -----------------------------
    ordinary(
        "main.py",
        "from app.settings import AWS_ACCESS_KEY_ID, s3_upload_target\n"
        "from billing.config import STRIPE_API_KEY, charge_customer\n"
        "from deploy.keys import DEPLOY_KEY, deploy_key_bytes\n"
        "from tools.github import GITHUB_PAT, release_headers\n"
        "from util.text import slugify\n\n\n"
        "def invoice(customer_id: str, amount_cents: int) -> str:\n"
        "    receipt = charge_customer(slugify(customer_id), amount_cents)\n"
        "    headers = release_headers()\n"
        "    return s3_upload_target(receipt['customer'])\n",
    )
    ordinary("web/app.ts", 'import { publishPackage } from "../client/publish";\n\nexport function release(dir: string): string {\n  return publishPackage(dir);\n}\n')
    ordinary("util/text.py", "def slugify(title: str) -> str:\n    return '-'.join(title.lower().split())\n")
    return corpus
