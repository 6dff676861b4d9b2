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

    def test_the_kept_members_lookup_agrees_with_maybe_members_as_rooms_change(self):
        rooms = Rooms(max_rooms=2)
        lookup = rooms.members_lookup()             # taken once, as LocalRooms keeps it

        def agree():
            for ref in range(5):
                self.assertEqual(lookup(ref), rooms.maybe_members(ref))
                members = lookup(ref)
                self.assertEqual(members is None, not rooms.exists(ref))
        agree()
        rooms.join(1, "a", "x")
        rooms.join(2, "a", "y")
        rooms.join(2, "b", "y")
        agree()
        rooms.leave(2, 0)
        rooms.drop(2)                               # b is empty now
        agree()
        rooms.join(3, "c", "z")                     # the table is full: b is forgotten
        agree()
        self.assertIsNone(lookup(1))
        self.assertEqual(dict(lookup(2)), {3: "z"})
        rooms.forget(1)
        agree()

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

    def test_the_rooms_of_a_connection_from_none_to_several_and_back(self):
        # one room is kept as a bare ref, several as a tuple: every way between them
        rooms = self.rooms
        for name in ("a", "b", "c"):
            rooms.join(5, name, "x")
            self.assertEqual(rooms.count_rooms_of(5), ord(name) - ord("a") + 1)
        self.assertEqual(rooms.count_memberships(), 3)
        for ref, left in ((1, [0, 2]), (0, [2]), (0, [2]), (2, [])):
            rooms.leave(5, ref)
            self.assertEqual((rooms.refs_of(5), rooms.count_rooms_of(5)), (left, len(left)))
        self.assertEqual(rooms.count_memberships(), 0)
        rooms.join(5, "b", "x")
        self.assertEqual((rooms.leave_all(5), rooms.refs_of(5)), ([(1, "x", (5,))], []))
        for name in ("c", "a"):
            rooms.join(5, name, "y")
        self.assertEqual(rooms.drop(5), [(0, "y"), (2, "y")])
        rooms.join(6, "a", "z")
        rooms.forget(6)
        self.assertEqual((rooms.count_memberships(), rooms.member_ids(0)), (0, ()))

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

    def test_a_full_table_forgets_the_longest_empty_room_and_never_reuses_a_ref(self):
        rooms = Rooms(max_rooms=3)
        for conn, name in ((1, "a"), (2, "b"), (3, "c")):
            rooms.join(conn, name, "x")
        rooms.leave(2, 1)                   # b empty first
        rooms.forget(1)                     # then a
        self.assertFalse(rooms.is_full())
        self.assertEqual(rooms.join(4, "d", "x")[0], 3)
        self.assertIsNone(rooms.ref_of("b"))
        self.assertFalse(rooms.exists(1))
        self.assertTrue(rooms.was_given(1))
        self.assertEqual(rooms.ref_of("a"), 0)
        self.assertEqual(rooms.join(4, "b", "x")[0], 4)             # a made way this time
        self.assertIsNone(rooms.ref_of("a"))
        self.assertTrue(rooms.is_full())
        self.assertEqual(rooms.count_rooms(), 3)

    def test_a_room_that_gets_a_member_again_is_not_forgotten(self):
        rooms = Rooms(max_rooms=2)
        rooms.join(1, "a", "x")
        rooms.leave(1, 0)
        rooms.join(2, "a", "y")             # a has a member again
        rooms.join(3, "b", "z")
        self.assertTrue(rooms.is_full())
        rooms.leave(3, 1)
        self.assertEqual(rooms.join(3, "c", "z")[0], 2)
        self.assertEqual(rooms.ref_of("a"), 0)
        self.assertIsNone(rooms.ref_of("b"))

    def test_a_given_ref_and_join_id_are_kept(self):
        # (the shared bus: Redis gives them)
        rooms = Rooms()
        self.assertEqual(rooms.join(1, "r", "ann", given_ref=7, given_join_id=40), (7, 40, True))
        self.assertTrue(rooms.was_given(6), "refs below a given one exist somewhere")
        self.assertEqual(rooms.join(2, "s", "bob")[0], 8, "and refs go on above it")

    def test_an_empty_room_whose_name_was_given_a_new_ref_moves_to_it(self):
        # (the shared table forgot the room, empty everywhere; its name came back as a new one)
        rooms = Rooms()
        ref, join_id, _ = rooms.join(1, "r", "ann", given_ref=3, given_join_id=9)
        rooms.leave(1, ref)
        self.assertEqual(rooms.join(1, "r", "ann", given_ref=5, given_join_id=9), (5, 9, True))
        self.assertEqual(rooms.ref_of("r"), 5)
        self.assertFalse(rooms.exists(3))
        self.assertEqual(rooms.member_ids(5), (1,))

    def test_after_100000_rooms_are_emptied_new_rooms_can_be_created(self):
        rooms = Rooms()
        for index in range(rooms.max_rooms):
            rooms.join(index, "room %d" % index, "x")
        self.assertTrue(rooms.is_full())
        for index in range(rooms.max_rooms):
            rooms.forget(index)
        self.assertFalse(rooms.is_full())
        self.assertEqual(rooms.join(1, "new", "x")[0], rooms.max_rooms)
