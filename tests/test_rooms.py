"""Layer 2: the room table (rooms.Rooms) on its own."""
import unittest

from rooms import Rooms

# ---------------------------------------------------------------------------------------------
# 2. Rooms
# ---------------------------------------------------------------------------------------------

class RoomsTests(unittest.TestCase):

    def setUp(self):
        self.rooms = Rooms()

    def test_refs_count_from_zero_and_are_stable_per_name(self):
        self.assertEqual(self.rooms.join(10, "room1", "a")[0], 0)
        self.assertEqual(self.rooms.join(11, "room2", "b")[0], 1)
        self.assertEqual(self.rooms.join(12, "room1", "c")[0], 0)
        self.assertEqual(self.rooms.join(12, "Room1", "c")[0], 2)   # case-sensitive

    def test_join_id_is_per_connection(self):
        _, first, _ = self.rooms.join(10, "r1", "a")
        _, again, _ = self.rooms.join(10, "r2", "a")
        _, other, _ = self.rooms.join(11, "r1", "b")
        self.assertEqual(first, again)
        self.assertNotEqual(first, other)

    def test_joining_twice_keeps_one_membership_and_the_first_name(self):
        self.assertTrue(self.rooms.join(10, "r", "a")[2])
        self.assertFalse(self.rooms.join(10, "r", "other")[2])
        self.assertEqual(self.rooms.member_ids(0), (10,))
        self.assertEqual(self.rooms.name_in(10, 0), "a")

    def test_members_in_join_order_and_leave(self):
        for conn in (3, 1, 2):
            self.rooms.join(conn, "r", "n%d" % conn)
        self.assertEqual(self.rooms.member_ids(0), (3, 1, 2))
        self.assertEqual(self.rooms.leave(1, 0), "n1")
        self.assertIsNone(self.rooms.leave(1, 0))
        self.assertEqual(self.rooms.member_ids(0), (3, 2))

    def test_refs_of_is_ascending(self):
        for name in ("c", "a", "b"):
            self.rooms.join(5, name, "x")
        self.rooms.join(6, "d", "y")
        self.rooms.join(5, "d", "x")
        self.assertEqual(self.rooms.refs_of(5), [0, 1, 2, 3])
        self.rooms.leave(5, 1)
        self.assertEqual(self.rooms.refs_of(5), [0, 2, 3])

    def test_leave_all_goes_in_ascending_ref_order_with_the_members_before_leaving(self):
        for name in ("b", "a"):
            self.rooms.join(5, name, "x" + name)
        self.rooms.join(6, "a", "y")
        self.assertEqual(self.rooms.leave_all(5), [(0, "xb", (5,)), (1, "xa", (5, 6))])
        self.assertEqual(self.rooms.refs_of(5), [])
        self.assertEqual(self.rooms.member_ids(1), (6,))
        self.assertEqual(self.rooms.leave_all(5), [])

    def test_forget_drops_memberships_and_join_id(self):
        self.rooms.join(5, "a", "x")
        self.rooms.forget(5)
        self.assertEqual(self.rooms.member_ids(0), ())
        self.assertIsNone(self.rooms.join_id_of(5))
        self.assertNotEqual(self.rooms.join(6, "a", "y")[1], 1)   # ids are never reused
        self.assertTrue(self.rooms.exists(0))                      # the room and its ref stay

    def test_is_full_only_at_the_room_limit(self):
        rooms = Rooms(max_rooms=2)
        rooms.join(1, "a", "x")
        self.assertFalse(rooms.is_full())
        rooms.join(1, "b", "x")
        self.assertTrue(rooms.is_full())
