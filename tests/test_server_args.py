"""Server.py's command line: the address in every form people type it, and the StudentID."""
import contextlib
import io
import os
import unittest
from unittest import mock

import Server


def parse(*argv, env=None):
    with mock.patch.dict(os.environ, env or {}, clear=False):
        if env is None:
            os.environ.pop("STUDENT_ID", None)
        return Server.parse_args(list(argv))


def refused(*argv):
    """The error message argparse prints for argv (it exits 2)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), unittest.TestCase().assertRaises(SystemExit):
        parse(*argv)
    return stderr.getvalue()


class AddressTests(unittest.TestCase):

    def test_every_form_of_the_address(self):
        for argv, want in [((), ("0.0.0.0", 8080)),
                           (("9000",), ("0.0.0.0", 9000)),
                           (("10.0.0.1",), ("10.0.0.1", 8080)),
                           (("127.0.0.1", "8085"), ("127.0.0.1", 8085)),
                           (("8085", "127.0.0.1"), ("127.0.0.1", 8085)),
                           (("127.0.0.1:8085",), ("127.0.0.1", 8085)),
                           (("[::1]:8086",), ("::1", 8086)),
                           (("::1",), ("::1", 8080))]:
            args = parse(*argv)
            self.assertEqual((args.ip, args.port), want, argv)

    def test_a_bad_port_is_refused_with_what_was_given(self):
        self.assertIn("not 'x'", refused("127.0.0.1:x"))
        self.assertIn("not '70000'", refused("127.0.0.1", "70000"))


class StudentIdTests(unittest.TestCase):

    def test_option_then_environment_then_placeholder(self):
        self.assertEqual(parse("--student-id", "123").student_id, "123")
        self.assertEqual(parse(env={"STUDENT_ID": "456"}).student_id, "456")
        self.assertEqual(parse().student_id, Server.DEFAULT_STUDENT_ID)

    def test_an_empty_environment_variable_means_unset(self):
        self.assertEqual(parse(env={"STUDENT_ID": ""}).student_id, Server.DEFAULT_STUDENT_ID)

    def test_an_empty_or_multi_line_option_is_refused(self):
        self.assertIn("--student-id", refused("--student-id", ""))
        self.assertIn("--student-id", refused("--student-id", "1\nIP:6.6.6.6"))
