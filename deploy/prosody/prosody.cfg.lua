-- Prosody for the bridge: one XMPP domain with local accounts, a MUC service
-- whose rooms are archived (XEP-0313), and the bridge as an external component
-- (XEP-0114). Every value comes from an environment variable with a default,
-- so the tests (free loopback ports, a temporary data directory) and
-- docker compose use this same file:
--
--   PROSODY_DATA_DIR        data directory (accounts, rooms, archives)
--   PROSODY_INTERFACE       address clients connect to (default 127.0.0.1)
--   PROSODY_COMPONENT_INTERFACE  address of the component port (default
--                           PROSODY_INTERFACE): loopback or an internal network only
--   PROSODY_C2S_PORT        client port (default 5222)
--   PROSODY_COMPONENT_PORT  component port, XEP-0114 (default 5347)
--   XMPP_DOMAIN             the users' domain (default localhost)
--   XMPP_MUC_SERVICE        the MUC service (default conference.<domain>)
--   XMPP_COMPONENT_JID      the bridge's component (default bridge.<domain>)
--   XMPP_COMPONENT_SECRET   the component's shared secret (required)
--   PROSODY_RUN_AS_ROOT     "1" lets root run it (containers, tests)
--   PROSODY_LOG_LEVEL       minimum level logged to the console (default info)
--   PROSODY_C2S_RATE        bandwidth of one client stream (default 50kb/s; the
--                           benchmarks raise it to measure the bridge, not this limit)

local domain = ENV_XMPP_DOMAIN or "localhost"
local muc_service = ENV_XMPP_MUC_SERVICE or ("conference." .. domain)
local component = ENV_XMPP_COMPONENT_JID or ("bridge." .. domain)
local secret = ENV_XMPP_COMPONENT_SECRET
if not secret or secret == "" then
	error("XMPP_COMPONENT_SECRET must be set", 0)
end

run_as_root = ENV_PROSODY_RUN_AS_ROOT == "1"
daemonize = false
local data_dir = ENV_PROSODY_DATA_DIR or "/var/lib/prosody"
data_path = data_dir
pidfile = data_dir .. "/prosody.pid"
log = { { levels = { min = ENV_PROSODY_LOG_LEVEL or "info" }, to = "console" } }

interfaces = { ENV_PROSODY_INTERFACE or "127.0.0.1" }
c2s_ports = { tonumber(ENV_PROSODY_C2S_PORT or "5222") }
component_interfaces = { ENV_PROSODY_COMPONENT_INTERFACE or ENV_PROSODY_INTERFACE or "127.0.0.1" }
component_ports = { tonumber(ENV_PROSODY_COMPONENT_PORT or "5347") }
-- No federation, no HTTP: a local stack for the bridge and its users.
s2s_ports = {}
http_ports = {}
https_ports = {}
c2s_direct_tls_ports = {}

modules_enabled = {
	"roster"; "saslauth"; "tls"; "disco"; "ping"; "time"; "version";
	"register"; "carbons"; "mam"; "limits";
}
modules_disabled = { "s2s"; "offline" }

authentication = "internal_hashed"
-- Accounts, rosters and room configs in files; message archives (users' MAM
-- and the rooms' muc_log) in SQLite (lua-dbi-sqlite3, in Prosody's image;
-- Prosody creates the schema). Internal (file) storage keeps a room's archive
-- as one list file that it loads whole for every join's history and every
-- MAM query, and once a room holds storage_archive_item_limit messages,
-- mod_muc_mam trims 1 % on each new message over the limit by reading and
-- rewriting that whole file: with 10,000 messages (7 MB) Prosody's one thread stalled
-- 3.8 s every 100 messages, for every room and client (measured by
-- tests/faults/test_abuse_xmpp.py). In SQL a join reads 20 rows and the
-- trim is a DELETE.
default_storage = "internal"
storage = { archive = "sql"; muc_log = "sql" }
sql = { driver = "SQLite3"; database = "prosody.sqlite" } -- in PROSODY_DATA_DIR
-- At most this many archived messages per room and per account (the newest
-- kept), and none older than a week (muc_log_expires_after, Prosody's
-- default, said here): the bridge's own database keeps the full history.
storage_archive_item_limit = 10000
muc_log_expires_after = "1w"
certificates = data_dir .. "/certs"

-- Clients: STARTTLS required, passwords only over TLS. Prosody finds the
-- domain's certificate in `certificates` (DOMAIN.crt and DOMAIN.key); make a
-- self-signed one with
--   deploy/prosody/make-cert.sh "$PROSODY_DATA_DIR/certs" "$XMPP_DOMAIN" "$XMPP_MUC_SERVICE"
-- or put a real one there. The component port (XEP-0114) has no TLS: keep it
-- on loopback or an internal network (PROSODY_COMPONENT_INTERFACE).
c2s_require_encryption = true
allow_unencrypted_plain_auth = false
allow_registration = false

-- Stanza size and rate limits for clients: a flood or a huge stanza from one
-- account cannot starve the others (and the bridge refuses bodies it cannot store).
c2s_stanza_size_limit = 256 * 1024
limits = {
	c2s = { rate = ENV_PROSODY_C2S_RATE or "50kb/s"; burst = "2s" };
}

VirtualHost (domain)

-- The MUC service keeps Prosody's defaults (rooms locked until their owner
-- configures them, as XEP-0045 says); the bridge needs no admin rights: it
-- creates each room it bridges and configures it through the owner form
-- (persistent, public or members-only, name, history, archiving).
Component (muc_service) "muc"
	modules_enabled = { "muc_mam" }
	name = "Bridge rooms"

Component (component)
	component_secret = secret
