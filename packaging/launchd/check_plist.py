#!/usr/bin/env python3
"""Checks a launchd property list against the keys launchd.plist(5) documents.

usage: check_plist.py KEYS_FILE PLIST...

The plist must parse (plistlib), have a Label and Program or
ProgramArguments, and use only the keys KEYS_FILE lists, each with a value
of a listed type (and in the listed set, where one is given). Exit status 1
names every problem, one a line; 0 prints "ok: PLIST".
"""
import plistlib
import sys

TYPES = {
    "string": str,
    "integer": int,
    "dict": dict,
    "array": list,
}


def load_keys(path):
    keys = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) < 2:
                raise SystemExit(f"{path}:{number}: expected NAME TYPES [VALUES…]: {line!r}")
            keys[fields[0]] = (fields[1].split("|"), fields[2:])
    return keys


def type_ok(value, kind):
    if kind == "boolean":
        return isinstance(value, bool)
    base, _, item = kind.partition(":")
    if base not in TYPES:
        raise SystemExit(f"unknown type {kind!r} in the keys file")
    # bool is an int in Python; an integer key must not take <true/>.
    if isinstance(value, bool) or not isinstance(value, TYPES[base]):
        return False
    return not item or all(type_ok(v, item) for v in value)


def check_dict(d, prefix, keys, problems):
    for key, value in d.items():
        name = prefix + key
        spec = keys.get(name) or keys.get(prefix + "*")
        if spec is None:
            where = f"in {prefix[:-1]}" if prefix else "at the top level"
            problems.append(f"{name}: not a key launchd.plist(5) documents {where}")
            continue
        kinds, allowed = spec
        if not any(type_ok(value, k) for k in kinds):
            problems.append(f"{name}: a {type(value).__name__} where launchd expects {' or '.join(kinds)}")
            continue
        if allowed and value not in allowed:
            problems.append(f"{name}: {value!r} is not one of {', '.join(allowed)}")
        if isinstance(value, dict) and any(k.startswith(name + ".") for k in keys):
            check_dict(value, name + ".", keys, problems)


def check(keys, path):
    problems = []
    try:
        with open(path, "rb") as f:
            plist = plistlib.load(f)
    except Exception as e:  # any parse failure is the finding
        return [f"not a valid property list: {e}"]
    if not isinstance(plist, dict):
        return ["the top level is not a dictionary"]
    if "Label" not in plist:
        problems.append("Label: missing (launchd requires it)")
    if "Program" not in plist and "ProgramArguments" not in plist:
        problems.append("Program / ProgramArguments: one of them is required")
    check_dict(plist, "", keys, problems)
    return problems


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    keys = load_keys(argv[1])
    failed = False
    for path in argv[2:]:
        problems = check(keys, path)
        for p in problems:
            print(f"{path}: {p}", file=sys.stderr)
        if problems:
            failed = True
        else:
            print(f"ok: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
