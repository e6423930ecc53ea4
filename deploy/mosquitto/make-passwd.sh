#!/bin/sh
# Create or update the broker's password file: ./make-passwd.sh passwd bridge SECRET [device SECRET ...]
# `python manage.py devices add <device> --room R --password P` does the same for one
# device when MQTT_PASSWD_FILE points at this file.
set -eu
file=$1
shift
[ -f "$file" ] || : > "$file"
while [ $# -ge 2 ]; do
    mosquitto_passwd -b "$file" "$1" "$2"
    shift 2
done
chmod 600 "$file"
