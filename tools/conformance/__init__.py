"""A conformance tester any student can point at their own chat server.

    python3 -m tools.conformance HOST PORT          (from the repository's top folder)
    python3 path/to/tools/conformance HOST PORT     (the same, from any folder)

It talks to the server under test over sockets only and never imports the server's code
(with --udp, only the client end of the UDP transport, sansio's ClientEndpoint). Each case
checks one rule of docs/PROTOCOL.md and gives PASS, FAIL (with the contract's words and the
bytes sent and received) or WARN (the course's text allows the server's reading, but the
contract settles on another). See docs/CONFORMANCE.md.

    wire.py            links (TCP, UDP), the replies cut by the contract's shapes, transcripts
    case.py            what a case is; the requests and replies, literally; contract quotes
    cases_requests.py  HELO, JOIN, CHAT, LEAVE, rooms, DISCONNECT, errors, unknown messages
    cases_stream.py    framing, CRLF, identity, concurrency, slow reader, long message,
                       the grader's sequence, KILL_SERVICE
    report.py          the text, JSON and HTML reports
    cli.py             the command line and the runner
"""
