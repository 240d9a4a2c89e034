"""pbxagent: the device agent that makes a pbxfw box secure by default."""
