#!/bin/sh
# Create the dynamic security file with the bridge's admin account, once:
#   ./init-dynsec.sh /mosquitto/data/dynamic-security.json bridge SECRET
# The bridge (MQTT_URL=mqtt://bridge:SECRET@..., MQTT_DYNSEC=1) then creates its
# own data role and every device's client and role from the database.
# An existing file is left as it is (it holds every change since).
set -eu
file=$1
user=$2
password=$3
if [ -f "$file" ]; then
    echo "$file exists; left as it is"
    exit 0
fi
mosquitto_ctrl dynsec init "$file" "$user" "$password"
chmod 600 "$file"
# In the docker image mosquitto runs as its own user and rewrites the file.
if id mosquitto >/dev/null 2>&1; then chown mosquitto "$file"; fi
