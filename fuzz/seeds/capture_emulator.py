#!/usr/bin/env python3
"""Captures real answers of the regent emulator (both profiles) as seeds for
the upstream_reply fuzz target: `endpoint\nstatus\nheaders\n\nbody`.

Usage: capture_emulator.py REGENT_BINARY OUT_DIR  (starts its own emulator on
a loopback port; nothing leaves the machine)."""
import base64, json, os, subprocess, sys, urllib.error, urllib.parse, urllib.request

regent, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
env = dict(os.environ, REGENT_EMULATOR_ADMIN_KEY="seed-key")
emu = subprocess.Popen([regent, "emulator", "--listen", "127.0.0.1:0", "--access-token-lifespan", "300"],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
url = next(w for w in emu.stdout.readline().split() if w.startswith("http://")).rstrip("/")
KEEP = ("content-type", "retry-after", "date", "location", "www-authenticate", "cache-control")

def call(method, path, body=None, headers=None, form=None):
    data, h = None, dict(headers or {})
    if body is not None:
        data, h["Content-Type"] = json.dumps(body).encode(), "application/json"
    if form is not None:
        data, h["Content-Type"] = urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded"
    req = urllib.request.Request(url + path, data=data, method=method, headers=h)
    try:
        r = urllib.request.urlopen(req)
        return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()

def save(name, endpoint, answer):
    status, headers, body = answer
    lines = [endpoint, str(status)] + [f"{k}: {v}" for k, v in headers.items() if k.lower() in KEEP]
    with open(os.path.join(out, name), "wb") as f:
        f.write(("\n".join(lines) + "\n\n").encode() + body)
    return json.loads(body) if body[:1] == b"{" else None

try:
    realm = "/auth/realms/regent/protocol/openid-connect/token"
    admin = call("POST", realm, form={"grant_type": "password", "username": "admin", "password": "admin", "client_id": "regent-agent"})
    bearer = {"Authorization": "Bearer " + json.loads(admin[2])["access_token"]}
    control = {"X-Emulator-Key": "seed-key"}

    def mint(**fields):
        _, _, b = call("POST", "/token/api/v5/registrationTokens", {"registrationToken": fields}, bearer)
        return json.loads(b)["registrationToken"]

    def redeem(token, identifier):
        body = {"authToken": {"identifier": identifier, "fqdn": "host.example", "macAddress": "aa:bb:cc:dd:ee:ff", "systemUserName": "alice"}}
        return call("POST", "/token/api/v5/authTokens", body, {"Authorization": "Basic " + token, "Accept": "application/json"})

    rt = mint(count=1)
    ok = save("sentinel-redeem-201", "sentinel-redeem", redeem(rt["token"], "dev-1/0"))
    save("sentinel-redeem-replay", "sentinel-redeem", redeem(rt["token"], "dev-1/0"))
    save("sentinel-redeem-exhausted", "sentinel-redeem", redeem(rt["token"], "dev-2/0"))
    save("sentinel-redeem-unknown", "sentinel-redeem", redeem("not-a-real-token", "dev-3/0"))
    off = mint(count=5)
    call("PATCH", "/token/api/v5/registrationTokens/" + off["id"], {"registrationToken": {"isEnabled": False}}, bearer)
    save("sentinel-redeem-disabled", "sentinel-redeem", redeem(off["token"], "dev-4/0"))
    old = mint(count=5)
    call("PATCH", "/token/api/v5/registrationTokens/" + old["id"], {"registrationToken": {"expiryDate": "2001-01-01"}}, bearer)
    save("sentinel-redeem-expired", "sentinel-redeem", redeem(old["token"], "dev-5/0"))

    refresh = ok["authToken"]["token"]["refresh_token"]
    form = {"grant_type": "refresh_token", "refresh_token": refresh, "client_id": "regent-agent"}
    save("sentinel-refresh-200", "sentinel-refresh", call("POST", realm, form=form))
    save("sentinel-refresh-reused", "sentinel-refresh", call("POST", realm, form=form))
    save("sentinel-refresh-garbage", "sentinel-refresh", call("POST", realm, form=dict(form, refresh_token="x")))
    save("sentinel-refresh-bad-client", "sentinel-refresh", call("POST", realm, form=dict(form, client_id="nobody")))

    call("POST", "/oauth/clients", {"clientId": "mtclient", "clientSecret": "s3cret-value", "authorizedGrantTypes": ["client_credentials", "refresh_token"], "scope": ["entities_api"]}, bearer)
    basic = {"Authorization": "Basic " + base64.b64encode(b"mtclient:s3cret-value").decode(), "Accept": "application/json"}
    wrong = {"Authorization": "Basic " + base64.b64encode(b"mtclient:wrong").decode()}
    cc = save("oauth2-token-200", "oauth2-token", call("POST", "/oauth/token", form={"grant_type": "client_credentials"}, headers=basic))
    save("oauth2-token-wrong-secret", "oauth2-token", call("POST", "/oauth/token", form={"grant_type": "client_credentials"}, headers=wrong))
    save("oauth2-token-bad-scope", "oauth2-token", call("POST", "/oauth/token", form={"grant_type": "client_credentials", "scope": "nope"}, headers=basic))
    save("oauth2-token-bad-grant", "oauth2-token", call("POST", "/oauth/token", form={"grant_type": "password"}, headers=basic))
    if cc and cc.get("refresh_token"):
        f = {"grant_type": "refresh_token", "refresh_token": cc["refresh_token"]}
        save("oauth2-refresh-200", "oauth2-refresh", call("POST", "/oauth/token", form=f, headers=basic))
        save("oauth2-refresh-reused", "oauth2-refresh", call("POST", "/oauth/token", form=f, headers=basic))
    save("oauth2-refresh-garbage", "oauth2-refresh", call("POST", "/oauth/token", form={"grant_type": "refresh_token", "refresh_token": "x"}, headers=basic))
    call("PUT", "/oauth/customers/acme", {"applicationClients": ["mtclient"], "multitokenConfig": {"clientCredentialsMultiTokenConfig": {"maxActiveTokensAllowed": 1}}}, bearer)
    call("POST", "/oauth/token", form={"grant_type": "client_credentials"}, headers=basic)
    save("oauth2-token-limit", "oauth2-token", call("POST", "/oauth/token", form={"grant_type": "client_credentials"}, headers=basic))

    for status in (429, 503, 500, 404):
        call("PUT", "/_emulator/faults", {"nextStatus": {"status": status, "count": 1}}, control)
        save(f"oauth2-token-fault-{status}", "oauth2-token", call("POST", "/oauth/token", form={"grant_type": "client_credentials"}, headers=basic))
        call("PUT", "/_emulator/faults", {"nextStatus": {"status": status, "count": 1}}, control)
        save(f"sentinel-refresh-fault-{status}", "sentinel-refresh", call("POST", realm, form=form))
    call("DELETE", "/_emulator/faults", None, control)

    # The discovery documents (issue 18): as served, and failing ones (the
    # emulator's faults do not reach its OpenID configuration route).
    save("sentinel-discovery-200", "sentinel-discovery", call("GET", "/token/api/v5/idpConfigurations", headers={"Accept": "application/json"}))
    save("oauth2-discovery-200", "oauth2-discovery", call("GET", "/.well-known/openid-configuration", headers={"Accept": "application/json"}))
    for status in (503, 404):
        call("PUT", "/_emulator/faults", {"nextStatus": {"status": status, "count": 1}}, control)
        save(f"sentinel-discovery-fault-{status}", "sentinel-discovery", call("GET", "/token/api/v5/idpConfigurations"))
    call("DELETE", "/_emulator/faults", None, control)
    call("PUT", "/_emulator/rate-limit", {"requests": 1, "perSeconds": 60}, control)
    redeem(rt["token"], "dev-1/0")
    save("sentinel-redeem-rate-limited", "sentinel-redeem", redeem(rt["token"], "dev-1/0"))
finally:
    emu.kill()
