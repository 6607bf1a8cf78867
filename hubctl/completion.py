"""Shell completion: the ``completion`` command and its scripts, generated from
the command table (so new commands complete without touching this file).
Service and tenant names and deployment ids complete live from the hub through
the hidden ``hubctl __complete services|tenants|deployments``.

A positional argument says how it completes with ``arg(..., complete=KIND)``:
``services``, ``tenants``, ``deployments``, ``files`` (local file names),
``layer`` (global, tier or tenant) or ``layer-name`` (the tier or tenant after
``layer``); arguments with ``choices`` complete those.
"""

from __future__ import annotations

import argparse
import shlex

from hubctl.app import COMMANDS, Context, arg, build_parser, command

_BASH = r"""# hubctl completion for bash. Load it with:  source <(hubctl completion bash)
_hubctl_names() {
  hubctl __complete "$1" --timeout 1 ${2:+--target "$2"} 2>/dev/null
}

_hubctl() {
  local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
  local nodes="|__NODES__|" takes_value="|__VALUED__|"
  local path="" npos=0 target="" i w
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="${COMP_WORDS[i]}"
    if [[ "$w" == -* ]]; then
      [[ "$w" == --target ]] && target="${COMP_WORDS[i+1]}"
      [[ "$takes_value" == *"|$w|"* ]] && ((i++))
    elif [[ -z "$path" && "$nodes" == *"|$w|"* ]]; then
      path="$w"
    elif [[ -n "$path" && "$nodes" == *"|$path $w|"* ]]; then
      path="$path $w"
    else
      ((npos++))
    fi
  done
  local words=""
  case "$path|$prev" in
__VALUES__
  esac
  if [[ -z "$words" ]]; then
    case "$path" in
__PATHS__
    esac
  fi
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -F _hubctl hubctl
"""

# Names completed live from the hub (``hubctl __complete KIND``).
_LIVE = ("services", "tenants", "deployments")

_ZSH = """#compdef hubctl
# hubctl completion for zsh (through bash completion). Load it with:
#   source <(hubctl completion zsh)
autoload -U +X compinit && compinit
autoload -U +X bashcompinit && bashcompinit
"""


def _options(parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, list[str]]]:
    """A parser's option strings, and the choices of those that take one value."""
    flags: list[str] = []
    valued: dict[str, list[str]] = {}
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        flags.extend(action.option_strings)
        if action.nargs != 0:
            for flag in action.option_strings:
                valued[flag] = [str(c) for c in action.choices or ()]
    return flags, valued


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def script(shell: str) -> str:
    """The completion script for ``bash`` or ``zsh``."""
    parser = build_parser()
    nodes: list[str] = []
    paths: list[str] = []

    top_flags, top_valued = _options(parser)
    # Options that take a value: the global ones (any command), then each
    # command's own where they differ from the global ones (`pick --strategy`
    # and `deployments start --strategy` offer different words).
    own: dict[str, dict[str, list[str]]] = {}
    top_words = [w for w in _subparsers(parser) if not w.startswith("__")]
    paths.append(f'      "") words={shlex.quote(" ".join([*top_words, *top_flags]))} ;;')

    def walk(prefix: str, p: argparse.ArgumentParser) -> None:
        subs = _subparsers(p)
        if subs:
            words = " ".join(w for w in subs if not w.startswith("__"))
            paths.append(f"      {shlex.quote(prefix)}) words={shlex.quote(words)} ;;")
            for word, child in subs.items():
                if word.startswith("__"):
                    continue
                full = f"{prefix} {word}"
                nodes.append(full)
                walk(full, child)
            return
        cmd = COMMANDS.get(tuple(prefix.split()))
        flags, valued = _options(p)
        mine = {f: c for f, c in valued.items() if top_valued.get(f) != c}
        if mine:
            own[prefix] = mine
        positional = [a for a in cmd.args if not a.flags[0].startswith("-")] if cmd else []
        cases = []
        for n, a in enumerate(positional):
            if a.complete in _LIVE:
                cases.append(f'{n}) words="$(_hubctl_names {a.complete} "$target")" ;;')
            elif a.complete == "files":
                files = 'COMPREPLY=($(compgen -f -- "$cur")); return'
                cases.append(f'{n}) [[ "$cur" == -* ]] || {{ {files}; }} ;;')
            elif a.complete == "layer":
                cases.append(f"{n}) words='global tier tenant' ;;")
            elif a.complete == "layer-name":
                cases.append(
                    f"{n}) case $prev in tier) words='free pro enterprise' ;; "
                    f'tenant) words="$(_hubctl_names tenants "$target")" ;; esac ;;'
                )
            elif a.kwargs.get("choices"):
                cases.append(f"{n}) words={shlex.quote(' '.join(a.kwargs['choices']))} ;;")
        flag_words = shlex.quote(" ".join(flags))
        if cases:
            inner = " ".join(cases)
            paths.append(
                f"      {shlex.quote(prefix)}) case $npos in {inner} esac;"
                f' words="$words "{flag_words} ;;'
            )
        else:
            paths.append(f"      {shlex.quote(prefix)}) words={flag_words} ;;")

    for word, child in _subparsers(parser).items():
        if word.startswith("__"):
            continue
        nodes.append(word)
        walk(word, child)

    # Cases on "PATH|FLAG": a command's own options first, then the global ones.
    value_cases: list[str] = []
    for path, mine in [*own.items(), ("*", top_valued)]:
        where = "*" if path == "*" else shlex.quote(path)
        for flag, choices in sorted(mine.items()):
            if choices:
                words = shlex.quote(" ".join(choices))
                value_cases.append(f"    {where}{shlex.quote('|' + flag)}) words={words} ;;")
        free = [f"{where}{shlex.quote('|' + f)}" for f, choices in sorted(mine.items())
                if not choices]  # fmt: skip
        if free:
            # A value of the user's own (a host, a port, an id): nothing to offer.
            value_cases.append(f"    {'|'.join(free)}) COMPREPLY=(); return ;;")
    valued = set(top_valued).union(*own.values())
    bash = (
        _BASH.replace("__NODES__", "|".join(nodes))
        .replace("__VALUED__", "|".join(sorted(valued)))
        .replace("__VALUES__", "\n".join(value_cases))
        .replace("__PATHS__", "\n".join(paths))
    )
    if shell == "zsh":
        return _ZSH + bash
    return bash


# -- the commands ----------------------------------------------------------------


@command(
    "completion",
    "print a shell completion script: source <(hubctl completion bash)",
    arg("shell", choices=("bash", "zsh")),
    needs_hub=False,
)
async def completion(ctx: Context, args: argparse.Namespace) -> None:
    ctx.output.out.write(script(args.shell))


@command(
    "__complete",
    "names for shell completion",
    arg("kind", choices=_LIVE),
    hidden=True,
)
async def complete(ctx: Context, args: argparse.Namespace) -> None:
    if args.kind == "tenants":
        names = [t.tenant_id for t in await ctx.hub.list_tenants()]
    elif args.kind == "deployments":
        names = [d.id for d in await ctx.hub.deployments()]
    else:
        names = [s.name for s in await ctx.hub.list_services(legacy_mode=True)]
    for name in names:
        ctx.output.out.write(name + "\n")
