#!/bin/sh
# Smoke test of installed Vigil packages on a user's VM (run by the Vagrantfiles here, as root).
# Makes a deployment CA, starts collector and sensor from their units, runs a command that the
# shipped rule pack alerts on, and waits until `vigil alerts` shows that alert.
set -eu

certs=/etc/vigil/certs
if [ ! -f "$certs/ca.pem" ]; then
    vigil certs init --dir "$certs"
    vigil certs issue --dir "$certs" --collector collector
    vigil certs issue --dir "$certs" --sensor "$(hostname)"
    vigil certs issue --dir "$certs" --operator smoke
fi
cat > /etc/vigil/sensor.conf.d/10-collector.yaml <<YAML
collector:
  address: 127.0.0.1:7443
  ca: $certs/ca.pem
  cert: $certs/$(hostname).pem
  key: $certs/$(hostname)-key.pem
YAML

vigil-sensor --config /etc/vigil/sensor.yaml --check-config
vigil-sensor --config /etc/vigil/sensor.yaml doctor
systemctl restart vigil-collector
systemctl restart vigil-sensor
systemctl is-active vigil-collector vigil-sensor

# A real behaviour the shipped pack flags: a text utility reading /etc/shadow. The second,
# empty file puts a marker in cat's command line so this run's alert can be told apart.
marker="vigil-smoke-$$"
touch "/tmp/$marker"
sleep 3
cat /etc/shadow "/tmp/$marker" >/dev/null
rm -f "/tmp/$marker"

operator="--collector 127.0.0.1:7443 --ca $certs/ca.pem --cert $certs/smoke.pem --key $certs/smoke-key.pem"
for _ in $(seq 1 20); do
    # shellcheck disable=SC2086
    if vigil $operator alerts --since 5m -o json | grep -q "$marker"; then
        echo "smoke test passed: the alert reached the collector"
        exit 0
    fi
    sleep 1
done
echo "smoke test FAILED: no alert for $marker" >&2
journalctl -u vigil-sensor -u vigil-collector --no-pager -n 50 >&2
exit 1
