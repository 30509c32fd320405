#!/usr/bin/env python3
"""Captures real IPC traffic and stored files of a regent agent enrolled at a
local emulator, as seeds for the ipc_frame, client_frame and store_file fuzz
targets.

Usage: capture_agent.py REGENT_BINARY OUT_DIR
Writes OUT_DIR/{ipc_frame,client_frame,store_file}/… (loopback only)."""
import json, os, socket, struct, subprocess, sys, tempfile, time

regent, out = sys.argv[1], sys.argv[2]
for d in ("ipc_frame", "client_frame", "store_file"):
    os.makedirs(os.path.join(out, d), exist_ok=True)
home = tempfile.mkdtemp(prefix="regent-seed-")
env = dict(os.environ, REGENT_EMULATOR_ADMIN_KEY="seed-key")
emu = subprocess.Popen([regent, "emulator", "--listen", "127.0.0.1:0"], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
url = next(w for w in emu.stdout.readline().split() if w.startswith("http://")).rstrip("/")
agent = None
try:
    admin_env = dict(env, REGENT_ADMIN_URL=url, REGENT_ADMIN_USER="admin",
                     REGENT_ADMIN_PASSWORD="admin")
    token = subprocess.run([regent, "admin", "registration-token", "create", "--count", "3"],
                           env=admin_env, capture_output=True, text=True, check=True).stdout.strip()
    sock_path = os.path.join(home, "agent.sock")
    cfg = os.path.join(home, "regent.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nprofile = "sentinel"\nurl = "{url}"\n[store]\nkind = "file"\n'
                f'[state]\ndir = "{home}/state"\n[ipc]\nsocket = "{sock_path}"\n')
    agent = subprocess.Popen([regent, "agent", "--config", cfg], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(sock_path):
            break
        time.sleep(0.05)
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    sent, got = bytearray(), bytearray()

    def exchange(name, request, answers=1):
        payload = json.dumps(request, separators=(",", ":")).encode()
        frame = struct.pack(">I", len(payload)) + payload
        sent.extend(frame)
        open(os.path.join(out, "ipc_frame", name), "wb").write(payload)
        s.sendall(frame)
        for i in range(answers):
            n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
            body = s.recv(n, socket.MSG_WAITALL)
            got.extend(struct.pack(">I", n) + body)
            open(os.path.join(out, "client_frame", f"{name}-{i}" if answers > 1 else name), "wb").write(body)

    exchange("hello", {"id": 1, "op": "hello", "versions": [1], "app": "seed", "instance": "seed-1"})
    exchange("status-unenrolled", {"id": 2, "op": "status"})
    exchange("token-not-enrolled", {"id": 3, "op": "token", "min_valid": 60})
    exchange("enroll", {"id": 4, "op": "enroll", "secret": token})
    exchange("enroll-again", {"id": 5, "op": "enroll", "secret": token})
    exchange("token", {"id": 6, "op": "token", "min_valid": 60})
    exchange("subscribe", {"id": 7, "op": "subscribe", "min_valid": 30}, answers=2)
    exchange("unsubscribe", {"id": 8, "op": "unsubscribe", "subscription": 7})
    exchange("status", {"id": 9, "op": "status"})
    exchange("metrics", {"id": 10, "op": "metrics"})
    exchange("unknown-op", {"id": 11, "op": "fly"})
    exchange("token-too-long", {"id": 12, "op": "token", "min_valid": 999999999})
    open(os.path.join(out, "ipc_frame", "stream-session"), "wb").write(b"stream\n" + bytes(sent))
    open(os.path.join(out, "client_frame", "stream-session"), "wb").write(b"stream\n" + bytes(got))
    s.close()
    state = os.path.join(home, "state")
    open(os.path.join(out, "store_file", "state.json"), "wb").write(b"state.json\n" + open(os.path.join(state, "state.json"), "rb").read())
    secrets = open(os.path.join(state, "secrets.json"), "rb").read()
    open(os.path.join(out, "store_file", "secrets.json"), "wb").write(b"secrets.json\n" + secrets)
    for name, value in json.loads(secrets).items():
        if name.endswith(".credential"):
            open(os.path.join(out, "store_file", "credential"), "wb").write(b"credential\n" + value.encode())
finally:
    if agent:
        agent.terminate()
        agent.wait()
    emu.kill()
