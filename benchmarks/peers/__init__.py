"""The peers the bridge is measured against: a plain Channels chat, written the way its docs show.

Ours, modelled on the Channels tutorial (an `AsyncWebsocketConsumer` that
`group_send`s each message) and on mqttasgi's README (an MQTT consumer that
stores with the ORM and `group_send`s). Neither stores before it tells, checks
order or fills gaps: that is the point of comparison.
"""
