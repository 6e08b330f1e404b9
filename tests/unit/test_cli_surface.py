"""The CLI surface: every command and option documented, one meaning per spelling, flags declared once.

- Every click command (groups and subcommands) and every option it takes has help text.
- A bool flag is `--flag` or `--flag=true|false` (pflag's rule): `--redirect-dns false` is refused
  with the same one line by `istio-iptables` and by every click command that takes Istio's flags.
- The Istio flags are declared once (meshnet.spec.flags.FLAGS): the pflag parser of
  `istio-iptables` and the click options of apply/render/status/diff/doctor read the same argv
  into the same values and the same Spec, for the golden cases and injector-like argv's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from harness.golden_cases import CASES

from meshnet.cli.app import cli
from meshnet.cli.apply_cmd import apply_cmd
from meshnet.cli.diff_cmd import diff_cmd
from meshnet.cli.doctor_cmd import doctor_cmd
from meshnet.cli.main import main
from meshnet.cli.options import parsed_flags
from meshnet.cli.render_cmd import render_cmd
from meshnet.cli.status_cmd import status_cmd
from meshnet.spec import flags as istio_flags

ISTIO_COMMANDS = {"apply": apply_cmd, "render": render_cmd, "status": status_cmd, "diff": diff_cmd,
                  "doctor": doctor_cmd}
INJECTOR = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
            "-d", "15090,15021,15020", "--log_output_level=default:info"]


def walk(command: click.Command, path: str = "meshnet") -> Iterator[tuple[str, click.Command]]:
    """Every command, and the ambient variant a command hands `--ambient` command lines to."""
    from meshnet.cli.options import MeshnetCommand

    yield path, command
    if isinstance(command, MeshnetCommand) and command.ambient is not None:
        yield f"{path} --ambient", command.ambient()
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, f"{path} {name}")


def test_the_ambient_variants_are_walked() -> None:
    variants = sorted(path for path, _ in walk(cli) if path.endswith(" --ambient"))
    assert variants == [f"meshnet {c} --ambient" for c in ("apply", "cleanup", "diff", "render")]


def test_ambient_help_lists_the_ambient_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apply", "--ambient", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: meshnet apply [OPTIONS]")
    for option in ("--dns-proxy VALUE", "--host-probe-snat ADDR", "--reconcile[=BOOL]", "--netns NAME|PATH"):
        assert option in out, option
    assert "--istio-inbound-ports" not in out  # the sidecar's Istio flags are not the ambient ones


def test_every_command_and_option_has_help() -> None:
    missing = []
    commands = list(walk(cli))
    assert len(commands) > 15  # the walk reaches the subcommands of cni, conntrack and probe too
    for path, command in commands:
        if not (command.help or "").strip():
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{path} {param.opts[0]}")
    assert missing == []


def test_every_bool_option_is_pflag_style() -> None:
    """No click is_flag option (which would refuse `--json=false`): every bool is a BoolOption."""
    from meshnet.cli.options import BoolOption, MeshnetCommand

    plain = [f"{path} {p.opts[0]}" for path, command in walk(cli) for p in command.params
             if isinstance(p, click.Option) and p.is_flag and p.name != "version"]
    assert plain == []
    bools = [p for _, command in walk(cli) for p in command.params if isinstance(p, BoolOption)]
    assert len(bools) > 20
    leaves = [(path, c) for path, c in walk(cli) if not isinstance(c, click.Group)]
    takes_bools = [path for path, c in leaves if any(isinstance(p, BoolOption) for p in c.params)]
    assert all(isinstance(c, MeshnetCommand) for path, c in leaves if path in takes_bools), takes_bools


def test_istio_iptables_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        istio_flags.parse_flags(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in (*istio_flags.FLAGS, *istio_flags.LOG_FLAGS):
        assert flag.help.strip() and flag.help.rstrip().endswith((".", ")")), flag.long
        assert f"--{flag.long}" in text and flag.help in text
        for env in flag.envs:
            assert env in text


def test_click_help_lists_the_istio_flags_with_env_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apply", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # click wraps lines
    assert "Istio flags" in text and "--redirect-dns[=BOOL]" in text
    assert "env REDIRECT_DNS, ISTIO_META_DNS_CAPTURE; default false" in text
    assert "-p, --envoy-port VALUE" in text


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    """Usage errors exit 2; a bad value (a SpecError) exits 1, as before."""
    got = main(argv)
    out, err = capsys.readouterr()
    assert got == code, (argv, got, err)
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


STRAY_TAIL = "unexpected argument 'false': a bool flag takes its value after '=' (--redirect-dns=false), as in Istio"


@pytest.mark.parametrize("command", ["istio-iptables -n", "render", "apply --netns mn-never-used",
                                     "status --netns mn-never-used", "diff --netns mn-never-used",
                                     "doctor --netns mn-never-used"])
def test_a_bool_flag_never_takes_a_separate_word(capsys: pytest.CaptureFixture[str], command: str) -> None:
    """Istio (pflag) reads `--redirect-dns false` as true plus a stray argument; meshnet refuses it,
    the same line everywhere, before anything is read or written (the namespace does not exist)."""
    line = one_line_error(capsys, [*command.split(), *INJECTOR, "--redirect-dns", "false"])
    prog = "istio-iptables" if command.startswith("istio") else f"meshnet {command.split()[0]}"
    assert line == f"{prog}: error: {STRAY_TAIL}"
    short = one_line_error(capsys, [*command.split(), *INJECTOR, "-n", "false"])
    assert short.endswith("(--dry-run=false), as in Istio")
    other = one_line_error(capsys, [*command.split(), *INJECTOR, "stray"])
    assert other.endswith("unexpected argument 'stray': these flags take no positional arguments")


@pytest.mark.parametrize("command", ["istio-iptables -n", "render --format transcript"])
def test_bool_spellings_mean_what_they_mean_in_istio(capsys: pytest.CaptureFixture[str], command: str,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.96.0.10\n")
    monkeypatch.setenv("MESHNET_RESOLV_CONF", str(resolv))
    extra = [] if command.startswith("istio") else ["--resolv-conf", str(resolv)]

    def rendered(*flags: str) -> str:
        assert main([*command.split(), *INJECTOR, *extra, *flags]) == 0
        return capsys.readouterr().out

    off, on = rendered(), rendered("--redirect-dns")
    assert "15053" in on and "15053" not in off
    assert rendered("--redirect-dns=true") == rendered("--redirect-dns=1") == on
    assert rendered("--redirect-dns=false") == rendered("--redirect-dns", "--redirect-dns=false") == off
    bad = one_line_error(capsys, [*command.split(), *INJECTOR, "--redirect-dns=maybe"], code=1)
    assert bad.endswith("error: invalid --redirect-dns 'maybe': expected true or false"), bad


@pytest.mark.parametrize("command", ["render --ambient", "render --ambient-host",
                                     "apply --ambient --netns mn-never-used", "diff --ambient --netns mn-never-used"])
def test_ambient_options_follow_the_same_rule(capsys: pytest.CaptureFixture[str], command: str) -> None:
    line = one_line_error(capsys, [*command.split(), "--redirect-dns", "false"])
    assert line == f"meshnet {command.split()[0]}: error: {STRAY_TAIL}"
    assert one_line_error(capsys, [*command.split(), "--ipv6", "0"]).endswith("(--ipv6=0), as in Istio")
    assert "expected true or false" in one_line_error(capsys, [*command.split(), "--redirect-dns=maybe"])


def test_ambient_bool_spellings(capsys: pytest.CaptureFixture[str]) -> None:
    def rendered(*flags: str) -> str:
        assert main(["render", "--ambient", "--format", "nft", *flags]) == 0
        return capsys.readouterr().out

    off, on = rendered(), rendered("--redirect-dns")
    assert on != off and rendered("--redirect-dns=true") == on
    assert rendered("--redirect-dns=false") == rendered("--redirect-dns", "--redirect-dns=false") == off
    assert rendered("--ipv6=false") == off


def test_meshnet_own_bool_options_follow_the_same_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", *INJECTOR, "--ipv6=false"]) == 0
    v4 = capsys.readouterr().out
    assert main(["render", *INJECTOR, "--ipv6"]) == 0
    assert "ip6tables-restore" in capsys.readouterr().out and "ip6tables-restore" not in v4
    line = one_line_error(capsys, ["render", *INJECTOR, "--ipv6", "false"])
    assert line.endswith("unexpected argument 'false': a bool flag takes its value after '=' (--ipv6=false), "
                         "as in Istio")


# The declarations-once corpus: the golden cases, plus injector-like argv's in every accepted spelling.
CORPUS = [(case.name, case.argv(), case.env) for case in CASES] + [
    ("injector", INJECTOR, {}),
    ("injector-tproxy-dns", [*INJECTOR[:7], "TPROXY", *INJECTOR[8:], "--redirect-dns=true", "--capture-all-dns",
                             "--drop-invalid=false", "--dual-stack=1"], {}),
    ("inline-forms", ["-p=15009", "-z15007", "--proxy-uid=1000,1001", "-g", "2000", "-b*", "--istio-service-cidr=*",
                      "-r", "-1", "--log_as_json", "--log_target", "stdout"], {}),
    ("env-and-flag", ["-b", "80"], {"ISTIO_INBOUND_PORTS": "90", "INVALID_DROP": "true", "ISTIO_DUAL_STACK": "1"}),
    ("later-wins", ["-p", "1", "-p", "2", "--redirect-dns", "--redirect-dns=false"], {}),
]


def click_params(command: click.Command, argv: list[str]) -> dict[str, object]:
    with command.make_context(command.name, list(argv)) as ctx:
        return dict(ctx.params)


@pytest.mark.parametrize("name", list(ISTIO_COMMANDS))
@pytest.mark.parametrize(("case", "argv", "env"), CORPUS, ids=[c[0] for c in CORPUS])
def test_pflag_parser_and_click_options_read_the_same(name: str, case: str, argv: list[str],
                                                      env: dict[str, str]) -> None:
    pflag = istio_flags.parse_flags(argv)
    clicked = parsed_flags(click_params(ISTIO_COMMANDS[name], argv))
    assert vars(clicked) == vars(pflag)
    values = istio_flags.values_from(pflag, env)
    assert istio_flags.values_from(clicked, env) == values
    try:
        expected = istio_flags.spec_from_values(values, env)
    except Exception as exc:  # a value Spec refuses (-r -1): refused the same way from both
        with pytest.raises(type(exc), match="route-table"):
            istio_flags.spec_from_values(istio_flags.values_from(clicked, env), env)
        return
    assert istio_flags.spec_from_values(istio_flags.values_from(clicked, env), env) == expected
    assert istio_flags.run_options_from_values(values) == istio_flags.run_options_from_values(
        istio_flags.values_from(clicked, env))
