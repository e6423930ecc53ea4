"""The compose file's topology without Docker: `make stack` and the topology test.

`compose` reads docker-compose.yml (interpolating a .env the way docker
compose does), `plan` turns each service replica into a local process (loopback
addresses instead of container names, Debian's servers instead of images),
`procfile` writes what honcho runs, `runner` starts one process once what it
depends on is healthy, by the compose file's own healthchecks.
"""
