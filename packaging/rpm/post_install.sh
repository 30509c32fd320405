# regent (rpm %post): the service user, its directories, the unit.
getent group regent >/dev/null || groupadd --system regent
getent passwd regent >/dev/null || useradd --system --gid regent \
    --home-dir /var/lib/regent --no-create-home --shell /sbin/nologin \
    --comment "regent licensing agent" regent
install -d -o regent -g regent -m 0700 /var/lib/regent /var/lib/regent/provisioning
if [ "$1" -eq 1 ]; then
    chown root:regent /etc/regent/regent.toml
    chmod 0640 /etc/regent/regent.toml
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl enable --now regent.service >/dev/null 2>&1 || :
    else
        systemctl try-restart regent.service >/dev/null 2>&1 || :
    fi
fi
