"""The fuzz suite: property tests of readers and ops, API fuzzing of the server, kills, full disks."""
