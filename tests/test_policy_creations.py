"""policy/creations.py: how fast rooms may be created, per connection and per address, with
plain numbers for time."""
import unittest
from unittest import mock

from policy import creations
from policy.creations import (ROOM_CREATION_BURST_PER_ADDRESS, ROOM_CREATION_BURST_PER_CONNECTION,
                              ROOM_CREATIONS_PER_SECOND_PER_CONNECTION, Refusal, RoomCreations)


class RoomCreationsTests(unittest.TestCase):

    def spend_all(self, limits, conn_id, address, now=0.0):
        while limits.maybe_refusal(conn_id, address, now) is None:
            limits.spend(conn_id, address)

    def test_a_connection_may_create_its_burst_then_one_per_refill(self):
        limits = RoomCreations()
        for _ in range(ROOM_CREATION_BURST_PER_CONNECTION):
            self.assertIsNone(limits.maybe_refusal(1, "192.0.2.1", 0.0))
            limits.spend(1, "192.0.2.1")
        self.assertEqual(limits.maybe_refusal(1, "192.0.2.1", 0.0),
                         Refusal("connection", ROOM_CREATION_BURST_PER_CONNECTION,
                                 ROOM_CREATIONS_PER_SECOND_PER_CONNECTION))
        self.assertIsNone(limits.maybe_refusal(
            1, "192.0.2.1", 1.0 / ROOM_CREATIONS_PER_SECOND_PER_CONNECTION))

    def test_asking_spends_nothing(self):
        limits = RoomCreations()
        for _ in range(3 * ROOM_CREATION_BURST_PER_CONNECTION):
            self.assertIsNone(limits.maybe_refusal(1, "192.0.2.1", 0.0))

    def test_the_address_counts_every_connection_from_it(self):
        limits = RoomCreations()
        conn_id = 0
        while limits.maybe_refusal(conn_id, "192.0.2.7", 0.0) is None:
            self.spend_all(limits, conn_id, "192.0.2.7")
            conn_id += 1
        self.assertEqual(limits.maybe_refusal(conn_id, "192.0.2.7", 0.0).whose, "address")
        self.assertEqual(conn_id, ROOM_CREATION_BURST_PER_ADDRESS
                         // ROOM_CREATION_BURST_PER_CONNECTION)
        self.assertIsNone(limits.maybe_refusal(conn_id, "198.51.100.1", 0.0))  # another address

    def test_a_forgotten_connection_starts_again(self):
        limits = RoomCreations()
        self.spend_all(limits, 1, "192.0.2.1")
        limits.forget(1)
        self.assertIsNone(limits.maybe_refusal(1, "192.0.2.1", 0.0))

    def test_idle_addresses_are_forgotten_past_the_table_size_busy_ones_kept(self):
        limits = RoomCreations()
        with mock.patch.object(creations, "ADDRESSES_REMEMBERED", 3):
            limits.maybe_refusal(1, "busy", 0.0)
            limits.spend(1, "busy")
            for index in range(2, 5):
                limits.maybe_refusal(index, "idle%d" % index, 0.0)
            self.assertEqual(sorted(limits._by_address), ["busy", "idle4"])
