"""``${NAME}`` in a config: expanded inside parsed values only, typed by the field, errors located.

Review 13, B2-B5: expansion used to be textual, before YAML parsing, so a comment was expanded,
a value holding ``#``, ``: `` or a newline rewrote the document, errors named no key, and
``${NAME:-default}`` ignored an empty NAME.
"""

from __future__ import annotations

import re
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_gateway import config
from support import REPO

UNSET = "EG_TEST_ENV_UNSET"


@pytest.fixture(autouse=True)
def _no_stray_variables(monkeypatch):
    for name in (UNSET, "EG_TEST_ENV_V", "EG_TEST_ENV_RUN", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)


def error_of(text: str, source: str = "site.yaml") -> config.ConfigError:
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, source)
    return info.value


# --- B2: comments ------------------------------------------------------------------------------

def test_a_reference_in_a_comment_is_not_expanded(monkeypatch):
    monkeypatch.setenv("EG_TEST_ENV_V", "h.example")
    cfg = config.loads(textwrap.dedent(f"""\
        # the broker host comes from ${{{UNSET}}}
        gateway:
          id: x   # set ${{{UNSET}}} in the unit
        broker:
          host: ${{EG_TEST_ENV_V}}  # not ${{{UNSET}}}
        """))
    assert (cfg.gateway.id, cfg.broker.host) == ("x", "h.example")


# --- B3: a value from the environment is one string --------------------------------------------

@pytest.mark.parametrize("value", ["/tmp/a #b", "a: b", "x\n  foo: 1", "'q'", '"', "[1, 2]", "{a: 1}", "*x",
                                   "- item", "!!int 5", "${EG_TEST_ENV_V}", "null", "", " padded "])
def test_a_value_with_yaml_syntax_is_taken_as_one_string(monkeypatch, value):
    monkeypatch.setenv("EG_TEST_ENV_V", value)
    assert config.loads("gateway:\n  id: x\nbroker:\n  host: ${EG_TEST_ENV_V}\n").broker.host == value


def test_an_error_after_a_multiline_value_names_its_own_line(monkeypatch):
    monkeypatch.setenv("EG_TEST_ENV_V", "/tmp/a\n  foo: 1")
    e = error_of("gateway:\n  id: x\n  state_dir: ${EG_TEST_ENV_V}\nbroker:\n  port: nope\n", "e2.yaml")
    assert str(e) == "e2.yaml:5:9: broker.port: expected an integer, got a string 'nope'"


def test_hash_in_a_path_is_kept(monkeypatch):
    monkeypatch.setenv("EG_TEST_ENV_V", "/tmp/a #b")
    assert config.loads("gateway:\n  id: x\n  state_dir: ${EG_TEST_ENV_V}\n").gateway.state_dir == "/tmp/a #b"


def test_an_alias_is_expanded_once(monkeypatch):
    monkeypatch.setenv("EG_TEST_ENV_V", "p${EG_TEST_ENV_V}-x")  # a prefix may not start with $ (MQTT's $SYS)
    cfg = config.loads("gateway: {id: x, topic_prefix: &p '${EG_TEST_ENV_V}'}\nbroker: {host: *p}\n")
    assert (cfg.gateway.topic_prefix, cfg.broker.host) == ("p${EG_TEST_ENV_V}-x", "p${EG_TEST_ENV_V}-x")


def test_a_substituted_value_is_converted_as_its_field_says(monkeypatch):
    monkeypatch.setenv("EG_TEST_ENV_V", "1883")
    monkeypatch.setenv("EG_TEST_ENV_RUN", "true")
    cfg = config.loads(textwrap.dedent("""\
        gateway: {id: x}
        broker:
          host: ${EG_TEST_ENV_V}
          port: ${EG_TEST_ENV_V}
          keepalive_s: "${EG_TEST_ENV_UNSET:-20}"
          protocol: ${EG_TEST_ENV_UNSET:-5}
          strict_secrets: ${EG_TEST_ENV_RUN}
        windows: {seconds: "${EG_TEST_ENV_UNSET:-2.5}"}
        detector: {threshold: "${EG_TEST_ENV_UNSET:-0.5}", params: {cusum_k: '${EG_TEST_ENV_UNSET:-3}'}}
        """))
    b = cfg.broker
    assert (b.host, b.port, b.keepalive_s, b.protocol, b.strict_secrets) == ("1883", 1883, 20, "5", True)
    assert type(b.port) is int and type(b.keepalive_s) is int
    assert (cfg.windows.seconds, cfg.detector.threshold, cfg.detector.params) == (2.5, 0.5, {"cusum_k": 3})


def test_an_unquoted_reference_in_a_flow_collection_gets_a_hint():
    e = error_of("gateway: {id: x}\nbroker: {host: h, port: ${EG_TEST_ENV_UNSET:-1883}}\n")
    assert str(e) == ("site.yaml:2:25: not valid YAML: expected ',' or '}', but got '{'; "
                      'inside [...] or {...}, put a ${NAME} reference in quotes: "${NAME}"')


def test_a_substituted_value_of_the_wrong_type_is_located(monkeypatch):
    monkeypatch.setenv("EG_TEST_ENV_V", "1883 # port")
    e = error_of("gateway: {id: x}\nbroker:\n  port: ${EG_TEST_ENV_V}\n")
    assert str(e) == "site.yaml:3:9: broker.port: expected an integer, got a string '1883 # port'"


# --- B4: an unset variable names the key; the credentials pattern works from a shell ----------

def test_an_unset_variable_names_the_key_and_the_reference():
    e = error_of(textwrap.dedent(f"""\
        gateway: {{id: x}}
        sensors:
          - id: a
            driver: serial_line
            options: {{port: "${{EG_TEST_ENV_RUN:-/tmp}}/${{{UNSET}}}.tty"}}
        """))
    assert str(e) == f"site.yaml:5:47: sensors[0].options.port: environment variable {UNSET} is not set"


def test_unset_credentials_directory_is_explained():
    e = error_of("gateway:\n  id: x\nbroker:\n  port: 8883\n  secrets_file: ${CREDENTIALS_DIRECTORY}/broker-secrets\n",
                 "cred.yaml")
    assert str(e) == ("cred.yaml:5:17: broker.secrets_file: environment variable CREDENTIALS_DIRECTORY is not set; "
                      "systemd sets it only inside the service: to check this file from a shell too, write "
                      "${CREDENTIALS_DIRECTORY:-/etc/edge-gateway/credentials}")


def test_the_documented_credentials_line_loads_inside_and_outside_the_unit(monkeypatch):
    docs = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    line = re.search(r"secrets_file: \$\{CREDENTIALS_DIRECTORY[^`\n]*", docs).group(0)
    text = f"gateway:\n  id: x\nbroker:\n  {line}\n"
    unit = (REPO / "configs" / "edge-gateway.service").read_text(encoding="utf-8")
    source = re.search(r"^LoadCredential=broker-secrets:(\S+)$", unit, re.M).group(1)
    assert config.loads(text).broker.secrets_file == source  # a technician's shell: the credential's source file
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/edge-gateway.service")
    assert config.loads(text).broker.secrets_file == "/run/credentials/edge-gateway.service/broker-secrets"


# --- B5: defaults as in a shell -----------------------------------------------------------------

@pytest.mark.parametrize(("value", "reference", "expected"), [
    (None, "${EG_TEST_ENV_V:-/d}", "/d"),
    ("", "${EG_TEST_ENV_V:-/d}", "/d"),
    ("/v", "${EG_TEST_ENV_V:-/d}", "/v"),
    (None, "${EG_TEST_ENV_V-/d}", "/d"),
    ("", "${EG_TEST_ENV_V-/d}", ""),
    ("/v", "${EG_TEST_ENV_V-/d}", "/v"),
    ("", "${EG_TEST_ENV_V}", ""),
    (None, "${EG_TEST_ENV_V:-}", ""),
])
def test_defaults_follow_the_shell(monkeypatch, value, reference, expected):
    if value is not None:
        monkeypatch.setenv("EG_TEST_ENV_V", value)
    assert config.loads(f"gateway: {{id: x}}\nbroker:\n  host: {reference}\n").broker.host == expected


def test_an_empty_variable_with_colon_dash_uses_the_default_for_a_path(monkeypatch):
    monkeypatch.setenv("EG_TEST_ENV_V", "")
    cfg = config.loads("gateway:\n  id: x\n  state_dir: ${EG_TEST_ENV_V:-/var/lib/x}\n", "e5.yaml")
    assert cfg.gateway.state_dir == "/var/lib/x"


# --- any value ----------------------------------------------------------------------------------

_TOKENS = ["#", " #", ": ", "\n", "\r\n", "'", '"', "${", "${EG_TEST_ENV_V}", "}", "-", "&a", "*a", "!!", "[", "{",
           "|", ">", "%", "@", "`", "~", "null", "1883", "true", ""]
_values = st.lists(st.tuples(st.text(st.characters(min_codepoint=1, exclude_categories=("Cs",)), max_size=4),
                             st.sampled_from(_TOKENS)), max_size=4).map(lambda parts: "".join(a + b for a, b in parts))


@settings(max_examples=60, deadline=None)
@given(_values)
def test_any_string_from_the_environment_loads_as_exactly_that_string(value):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EG_TEST_ENV_V", value)
        assert config.loads("gateway: {id: x}\nbroker:\n  host: ${EG_TEST_ENV_V}\n").broker.host == value
