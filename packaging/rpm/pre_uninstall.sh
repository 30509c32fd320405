# regent (rpm %preun): stop and disable the service on removal (not upgrade).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now regent.service >/dev/null 2>&1 || :
fi
