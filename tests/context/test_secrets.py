"""The secret rules on a corpus of realistic secrets (tests/context/secrets_corpus.py): every one
stays out of the index, out of an editor buffer's context and out of retrieval, while ordinary
code about keys and credentials (google-auth's `credentials.py`, code naming a key's armour) is
still read."""

from __future__ import annotations

from pathlib import Path

import pytest

from fimble.chat.retrieve import SymbolSearch
from fimble.chat.service import ChatWorkspace
from fimble.context.files import SkipKind, UnindexableFile, read_source, secret_content_kind, secret_name_pattern, secret_path_reason, secret_reason
from fimble.context.indexer import WorkspaceIndex
from fimble.context.retrieve import repository_context
from fimble.context.store import IndexStore
from tests.context.secrets_corpus import SecretsCorpus, build_secrets_corpus

# Secrets whose values have no format a content rule knows: only their names keep them out.
NAME_ONLY = {".env.production", "credentials.json"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> SecretsCorpus:
    return build_secrets_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def index(corpus: SecretsCorpus, tmp_path_factory) -> WorkspaceIndex:
    index = WorkspaceIndex(corpus.root, IndexStore(corpus.root, cache_dir=tmp_path_factory.mktemp("cache")))
    index.build()
    return index


def test_the_corpus_holds_every_kind_the_rules_must_know(corpus: SecretsCorpus) -> None:
    kinds = {secret.kind for secret in corpus.secrets}
    for expected in ("OpenSSH private key", "PEM RSA private key", "PEM EC private key", "GCP service-account JSON", "JWT", ".npmrc", ".pypirc", ".netrc", "kubeconfig", ".env"):
        assert expected in kinds
    assert all(secret.needles for secret in corpus.secrets)


def test_no_secret_enters_the_index_and_ordinary_code_does(corpus: SecretsCorpus, index: WorkspaceIndex) -> None:
    assert set(index.entries) == set(corpus.ordinary)
    # Names only the secret files define: nothing can retrieve them.
    for name in ("STRIPE_API_KEY", "charge_customer", "postSlackMessage", "publishPackage", "SigningKey", "GITHUB_PAT", "DEPLOY_KEY"):
        assert index.definitions(name) == [], name


def test_every_secret_is_refused_from_the_disk_and_as_an_editor_buffer(corpus: SecretsCorpus, index: WorkspaceIndex) -> None:
    for secret in corpus.secrets:
        path = corpus.root / secret.path
        text = path.read_text()
        assert secret_reason(path, text) is not None, secret.path
        if secret_path_reason(path) is None:  # secret by its contents: the read refuses it
            with pytest.raises(UnindexableFile) as refused:
                read_source(path)
            assert refused.value.kind is SkipKind.SECRET_CONTENT, secret.path
        index.open_document(path, text)
        assert index.relative(path) not in index.entries, secret.path
        index.close_document(path)


def test_content_rules_catch_the_secrets_under_an_ordinary_name(corpus: SecretsCorpus) -> None:
    missed = {secret.path for secret in corpus.secrets if secret_content_kind((corpus.root / secret.path).read_text()) is None}
    assert missed == NAME_ONLY


def test_retrieval_for_a_completion_and_for_a_chat_holds_no_secret(corpus: SecretsCorpus, index: WorkspaceIndex) -> None:
    main = (corpus.root / "main.py").read_text()
    cursor = main.index("    receipt = charge_customer(slugify")  # a line that calls into other files
    read_text = ChatWorkspace(corpus.root, index).read_relative
    context = repository_context(index, "main.py", main[:cursor], main[cursor:], {}, len, 100_000, read_text)
    assert "def slugify" in context  # retrieval ran, and found the ordinary file main.py uses
    assert corpus.leaks_in(context) == []
    snippets = SymbolSearch(index, read_text).search("how does charge_customer use the Stripe key, the GitHub PAT and slugify", k=20)
    assert snippets and corpus.leaks_in("\n".join(snippet.text for snippet in snippets)) == []


@pytest.mark.parametrize(
    "name, refused",
    [
        ("credentials.py", False), ("secrets.py", False), ("credentials.ts", False), ("Credentials.java", False),
        ("credentials", True), ("credentials.json", True), ("credentials.yml.enc", True), ("credentials.sh", True),
        ("secrets.toml", True), ("secrets.yaml", True), ("credentials_prod.csv", True),
    ],
)  # fmt: skip
def test_source_files_named_like_credential_stores_are_judged_by_their_contents(name: str, refused: bool) -> None:
    assert (secret_name_pattern(name) is not None) is refused


def test_a_credentials_source_file_with_a_token_is_refused_by_content(tmp_path: Path) -> None:
    ordinary = tmp_path / "credentials.py"
    ordinary.write_text('class Credentials:\n    """OAuth 2.0 credentials."""\n\n    def refresh(self, request):\n        self.token = request()\n')
    assert read_source(ordinary).startswith("class Credentials")
    holding = tmp_path / "google" / "credentials.py"
    holding.parent.mkdir()
    holding.write_text('TOKEN = "ghp_' + "Zq9" * 12 + '"\n')
    with pytest.raises(UnindexableFile) as refused:
        read_source(holding)
    assert refused.value.kind is SkipKind.SECRET_CONTENT


def test_credential_directories_mark_a_file_wherever_it_lies() -> None:
    assert secret_path_reason(Path("/home/ada/.kube/config")) is not None
    assert secret_path_reason(Path("/home/ada/.ssh/config")) is not None
    assert secret_path_reason(Path("/home/ada/project/config.yaml")) is None


KEY_LINE = "MIIEowIBAAKCAQEAwJ3b8cD4pE2kq7Lz0u5gT1yV9nR4sXqPj3mH6dF8aB2cN7eK"
NOT_KEYS = {
    "a marker constant": '_PKCS8_MARKER = ("-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----")\n',
    "a regex": '_KEY = re.compile(b"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----")\n',
    "a docs placeholder": 'key="-----BEGIN PRIVATE KEY-----\\nXXXX\\nXXXX\\n-----END PRIVATE KEY-----"\n',
    "a docstring": '"private_key": "-----BEGIN EC PRIVATE KEY-----\\n<key bytes>\\n-----END EC PRIVATE KEY-----\\n",\n',
    "an elided example": '"PrivateKey": "-----BEGIN RSA PRIVATE KEY-----\\nMIIEowIABAKCAQEAqKpRgnn6yq26U3yt5YFZquyukfRjbMX...fvY4+te\\n"',
}
KEYS = {
    "a PEM file": f"-----BEGIN RSA PRIVATE KEY-----\n{KEY_LINE}\n-----END RSA PRIVATE KEY-----\n",
    "escaped in JSON": f'{{"private_key": "-----BEGIN PRIVATE KEY-----\\n{KEY_LINE}\\n-----END PRIVATE KEY-----\\n"}}',
    "concatenated in code": f'KEY = (\n    "-----BEGIN EC PRIVATE KEY-----\\n"\n    "{KEY_LINE}\\n"\n)\n',
    "encrypted": f"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,3F17F5316E2BAC89\n\n{KEY_LINE}\n",
    "PGP": f"-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n{KEY_LINE}\n",
}


@pytest.mark.parametrize("what", sorted(NOT_KEYS))
def test_code_naming_a_private_keys_armour_is_not_a_key(what: str) -> None:
    assert secret_content_kind(NOT_KEYS[what]) is None


@pytest.mark.parametrize("what", sorted(KEYS))
def test_a_private_key_is_found_however_it_is_written(what: str) -> None:
    assert secret_content_kind(KEYS[what]) == "private key"


def test_aws_documented_example_keys_are_not_credentials() -> None:
    # awscli, boto3 and moto quote these in 45 files; a real key id never holds "EXAMPLE".
    assert secret_content_kind('aws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n') is None
    assert secret_content_kind("key = AKIAIOSFODNN7EXAMPLE; other = AKIA2E0A8F3B244C9986\n") == "AWS access key id"
