#!/usr/bin/env python3
"""Writes the request payloads that make the IPC decoder hold the most heap
(64 KiB frames of tiny JSON values, which serde buffers one by one), as
ipc_frame inputs. They are kept out of the corpus because inputs this large
slow the fuzzer several times over; measure them with:

  python3 fuzz/seeds/heap_cases.py /tmp/heap
  REGENT_FUZZ_HEAP=1 fuzz/target/x86_64-unknown-linux-gnu/release/ipc_frame /tmp/heap/*
"""
import os, sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
CAP = 64 * 1024

def fill(prefix, unit, suffix):
    n = (CAP - len(prefix) - len(suffix)) // len(unit)
    return (prefix + unit * n).rstrip(",") + suffix

cases = {
    "versions": fill('{"id":1,"op":"hello","versions":[', "1,", "]}"),
    "unknown-array": fill('{"id":1,"op":"status","x":[', "0,", "]}"),
    "unknown-nested": fill('{"id":1,"op":"status","x":[', "[],", "]}"),
    "unknown-objects": fill('{"id":1,"op":"status","x":[', "{},", "]}"),
    "many-keys": fill('{"id":1,"op":"status",', '"k":0,', '"z":0}'),
    "escapes": '{"id":1,"op":"hello","versions":[1],"app":"' + "\\u0041" * ((CAP - 60) // 6) + '"}',
}
for name, payload in cases.items():
    with open(os.path.join(out, name), "w") as f:
        f.write("payload\n" + payload[:CAP])
