#!/bin/sh
# A self-signed certificate for an XMPP domain (and its MUC service), for STARTTLS on c2s.
#
#   deploy/prosody/make-cert.sh CERT_DIR DOMAIN [OTHER_NAME ...]
#
# writes CERT_DIR/DOMAIN.crt and CERT_DIR/DOMAIN.key, where Prosody finds them
# (its `certificates` directory, $PROSODY_DATA_DIR/certs in the shipped config).
# Clients verify against CERT_DIR/DOMAIN.crt itself (pin it, or trust it as a
# CA). For ejabberd: cat DOMAIN.crt DOMAIN.key > bridge.pem. For a public
# domain use a real certificate instead (certbot; `prosodyctl --root cert import`).
set -eu
if [ $# -lt 2 ]; then
	echo "usage: $0 CERT_DIR DOMAIN [OTHER_NAME ...]" >&2
	exit 2
fi
dir=$1
domain=$2
shift 2
names="DNS:$domain"
for other in "$@"; do
	names="$names,DNS:$other"
done
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=$domain" \
	-addext "subjectAltName=$names" -addext "basicConstraints=critical,CA:TRUE" \
	-keyout "$dir/$domain.key" -out "$dir/$domain.crt" 2>/dev/null
chmod 644 "$dir/$domain.crt"
echo "$dir/$domain.crt"
