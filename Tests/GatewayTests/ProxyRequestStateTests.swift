import AttestationService
import CaidTestSupport
@testable import Gateway
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOHTTP2
import RATLS
import Testing

/// The proxy connection's state machine, without a channel: milliseconds.
@Suite struct ProxyRequestStateTests {
    let route = ProxyRoute(kind: .forward, host: "srv", port: 8080)
    let hello = ByteBuffer(string: "hello")

    func head(_ method: HTTPMethod = .GET, _ uri: String = "http://srv:8080/a", version: HTTPVersion = .http1_1, _ headers: [(String, String)] = [("Host", "srv:8080")]) -> HTTPRequestHead {
        HTTPRequestHead(version: version, method: method, uri: uri, headers: HTTPHeaders(headers))
    }

    func response(_ status: HTTPResponseStatus = .ok, version: HTTPVersion = .http1_1, _ headers: [(String, String)] = [("Content-Length", "2")]) -> HTTPClientResponsePart {
        .head(HTTPResponseHead(version: version, status: status, headers: HTTPHeaders(headers)))
    }

    /// A forwarded request whose stream is open, its request whole.
    func forwarding(_ head: HTTPRequestHead? = nil) -> ProxyRequestState {
        var state = ProxyRequestState(filter: DestinationFilter())
        _ = state.requestPart(.head(head ?? self.head()))
        _ = state.requestPart(.end(nil))
        _ = state.streamOpened()
        _ = state.forwardSetUp()
        return state
    }

    @Test func theBodyAndTheNextRequestThatCameWithTheHeadWaitForTheStream() {
        var state = ProxyRequestState(filter: DestinationFilter())
        let post = head(.POST, "http://srv:8080/a", [("Host", "srv:8080"), ("Content-Length", "5")])
        #expect(state.requestPart(.head(post)) == .openStream(route))
        #expect(!state.mayReadClient, "nothing more is read while the stream opens")
        #expect(state.requestPart(.body(hello)) == .none)
        #expect(state.requestPart(.end(nil)) == .none)
        let next = head(.GET, "/b")
        #expect(state.requestPart(.head(next)) == .none)
        #expect(state.requestPart(.end(nil)) == .none)
        #expect(state.streamOpened() == .setUpForward)
        #expect(state.forwardSetUp() == .sendUpstream([.head(ProxyRoute.forwardedHead(post)), .body(.byteBuffer(hello)), .end(nil)], flush: true))
        #expect(state.pipelined == [.head(next), .end(nil)])
        #expect(!state.mayReadClient, "a pipelined request waits for the response before it")
        guard case .respond(.head(let answer)) = state.responsePart(response()) else { Issue.record("no response head"); return }
        #expect(answer.status == .ok && !answer.headers.contains(name: "connection"), "kept alive: no Connection: close")
        #expect(state.responsePart(.body(ByteBuffer(string: "ok"))) == .respond(.body(.byteBuffer(ByteBuffer(string: "ok")))))
        #expect(state.responsePart(.end(nil)) == .respond(.end(nil)))
        #expect(state.exchangeFinished() == .replay([.head(next), .end(nil)]))
        #expect(state.state == .idle && state.pipelined.isEmpty)
        #expect(state.requestPart(.head(next)) == .openStream(route))
    }

    @Test func aBodyThatComesLaterGoesStraightIntoTheStream() {
        var state = ProxyRequestState(filter: DestinationFilter())
        _ = state.requestPart(.head(head(.POST)))
        _ = state.streamOpened()
        #expect(state.forwardSetUp() == .sendUpstream([.head(ProxyRoute.forwardedHead(head(.POST)))], flush: true))
        #expect(state.requestPart(.body(hello)) == .sendUpstream([.body(.byteBuffer(hello))], flush: false))
        #expect(state.requestPart(.end(nil)) == .sendUpstream([.end(nil)], flush: true))
    }

    @Test func aRequestThatIsNotCarriedIsRefusedAndTheConnectionClosesAfterIt() throws {
        var state = ProxyRequestState(filter: DestinationFilter())
        guard case .refuse(.badRequest, let message, close: false) = state.requestPart(.head(head(.GET, "/", []))) else {
            Issue.record("not refused"); return
        }
        #expect(message == "no Host header in the request")
        #expect(state.requestPart(.body(hello)) == .none, "the rest of the request is dropped")
        #expect(state.requestPart(.end(nil)) == .close(cancelExchange: false))

        var filtered = ProxyRequestState(filter: try DestinationFilter(parsing: ["other:80"]))
        guard case .refuse(.forbidden, let why, _) = filtered.requestPart(.head(head())) else { Issue.record("not refused"); return }
        #expect(why.contains("not in the destinations to tunnel"))
    }

    @Test func aStreamThatDoesNotOpenIsAnsweredWithTheReason() {
        var state = ProxyRequestState(filter: DestinationFilter())
        _ = state.requestPart(.head(head()))
        #expect(state.streamFailed(verification: true, reason: "policy strict") == .refuse(status: .forbidden, message: "srv:8080 did not prove a trusted TEE: policy strict", close: false))
        #expect(state.state == .refusing, "the request's end is still to come")

        var ended = ProxyRequestState(filter: DestinationFilter())
        _ = ended.requestPart(.head(head()))
        _ = ended.requestPart(.end(nil))
        #expect(ended.streamFailed(verification: false, reason: "reset") == .refuse(status: .badGateway, message: "cannot open an attested tunnel to srv:8080: reset", close: true))
        #expect(ended.streamOpened() == .closeStream, "a stream that opens after all is closed")

        var setup = ProxyRequestState(filter: DestinationFilter())
        _ = setup.requestPart(.head(head()))
        _ = setup.streamOpened()
        #expect(setup.forwardSetupFailed(reason: "x") == .refuse(status: .badGateway, message: "cannot set up the tunnel stream to srv:8080: x", close: false))
    }

    @Test func halfCloseLetsTheResponseComeBackThenCloses() {
        var state = forwarding()
        #expect(state.clientInputClosed() == .none)
        _ = state.responsePart(response())
        _ = state.responsePart(.end(nil))
        #expect(state.exchangeFinished() == .close(cancelExchange: false))

        var idle = ProxyRequestState(filter: DestinationFilter())
        #expect(idle.clientInputClosed() == .close(cancelExchange: false), "EOF between requests: done")
    }

    @Test func aConnectBecomesAPipeAndCarriesAnEOFThatCameWhileItOpened() {
        var state = ProxyRequestState(filter: DestinationFilter())
        let connect = head(.CONNECT, "srv:443", [])
        #expect(state.requestPart(.head(connect)) == .openStream(ProxyRoute(kind: .connect, host: "srv", port: 443)))
        #expect(state.requestPart(.end(nil)) == .none)
        #expect(state.clientInputClosed() == .none)
        #expect(state.streamOpened() == .joinConnect(inputClosed: true))
        #expect(state.state == .connected)
    }

    @Test func theClientGoingAwayResetsTheStreamOrDropsTheOneThatOpens() {
        var opening = ProxyRequestState(filter: DestinationFilter())
        _ = opening.requestPart(.head(head()))
        #expect(opening.clientClosed() == .none)
        #expect(opening.streamOpened() == .closeStream)
        #expect(opening.streamFailed(verification: false, reason: "x") == .none, "nothing is written to a client that is gone")

        var state = forwarding()
        #expect(state.clientClosed() == .cancelExchange)
        #expect(state.responsePart(.end(nil)) == .none)
    }

    @Test func readsFollowTheOtherSidesRoom() {
        var state = forwarding(head(.POST, "http://srv:8080/a", [("Host", "srv:8080"), ("Content-Length", "5")]))
        #expect(state.mayReadClient && state.mayReadUpstream)
        state.upstreamWritabilityChanged(false)
        #expect(!state.mayReadClient, "the stream cannot take more: the client is not read")
        state.upstreamWritabilityChanged(true)
        #expect(state.mayReadClient)
        state.clientWritabilityChanged(false)
        #expect(!state.mayReadUpstream, "the client cannot take more: the response is not read")
        state.clientWritabilityChanged(true)
        #expect(state.mayReadUpstream)
    }

    @Test func errorsAreAnsweredOrCutTheConnection() {
        var idle = ProxyRequestState(filter: DestinationFilter())
        #expect(idle.errorCaught(parserError: true, description: "invalid method") == .refuse(status: .badRequest, message: "not an HTTP/1.x proxy request: invalid method", close: true))

        var forwardingError = forwarding()
        #expect(forwardingError.errorCaught(parserError: false, description: "x") == .close(cancelExchange: true))

        var noResponse = forwarding()
        #expect(noResponse.exchangeFailed(reason: "the stream closed") == .refuse(status: .badGateway, message: "the tunnel stream ended without a response: the stream closed", close: false))

        var started = forwarding()
        _ = started.responsePart(response())
        #expect(started.exchangeFailed(reason: "reset") == .close(cancelExchange: false), "half a response cannot be taken back")
    }

    @Test func anHTTP10ClientGetsALengthlessResponseAsTheConnectionsLast() {
        var state = forwarding(head(.GET, "http://srv:8080/a", version: .http1_0, [("Host", "srv:8080"), ("Connection", "keep-alive")]))
        guard case .respond(.head(let answer)) = state.responsePart(response(.ok, [("Transfer-Encoding", "chunked")])) else {
            Issue.record("no head"); return
        }
        #expect(answer.version == .http1_0)
        #expect(answer.headers["Connection"] == ["close"])
        #expect(state.exchangeFinished() == .closeOutput)

        var kept = forwarding(head(.GET, "http://srv:8080/a", version: .http1_0, [("Host", "srv:8080"), ("Connection", "keep-alive")]))
        guard case .respond(.head(let delimited)) = kept.responsePart(response()) else { Issue.record("no head"); return }
        #expect(delimited.headers["Connection"] == ["keep-alive"])
        #expect(kept.exchangeFinished() == .none)
    }
}

/// The proxy connection's pipeline in `EmbeddedChannel`s: the client's socket, the tunnel stream and the dial
/// between them are driven by hand on one `EmbeddedEventLoop`, so every interleaving is exact and nothing waits.
@Suite struct TunnelProxyPipelineTests {
    typealias Recorder = TunnelStreamPipelineTests.Recorder

    /// The streams the proxy asked for, in order; the test answers each.
    final class Dials: @unchecked Sendable {
        var requested: [(host: String, port: Int, promise: EventLoopPromise<any Channel>)] = []
    }

    struct Rig {
        let loop = EmbeddedEventLoop()
        let client: EmbeddedChannel
        let stream: EmbeddedChannel
        let dials = Dials()
        let clientSide = Recorder()
        let streamSide = Recorder()

        init() throws {
            client = EmbeddedChannel(loop: loop)
            stream = EmbeddedChannel(loop: loop)
            let dials = dials
            try client.pipeline.syncOperations.addHandler(clientSide)
            try ProxyConnectionHandler.configure(client, openStream: { host, port, loop in
                let promise = loop.makePromise(of: (any Channel).self)
                dials.requested.append((host, port, promise))
                return promise.futureResult
            }, filter: DestinationFilter(), logger: quietLogger)
            try stream.pipeline.syncOperations.addHandler(streamSide)
            client.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1), promise: nil)
            stream.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 2), promise: nil)
        }

        func send(_ text: String) throws {
            try client.writeInbound(ByteBuffer(string: text))
        }

        /// The first dial opens `stream`.
        func open() {
            dials.requested.first?.promise.succeed(stream)
            loop.run()
        }

        func clientBytes() throws -> String {
            var text = ""
            while let buffer = try client.readOutbound(as: ByteBuffer.self) { text += String(buffer: buffer) }
            return text
        }

        /// What went into the stream, and whether END_STREAM followed.
        func upstream() throws -> (text: String, ended: Bool) {
            var text = ""
            var ended = false
            while let frame = try stream.readOutbound(as: HTTP2Frame.FramePayload.self) {
                guard case .data(let data) = frame else { continue }
                if case .byteBuffer(let buffer) = data.data { text += String(buffer: buffer) }
                ended = ended || data.endStream
            }
            return (text, ended)
        }

        func respond(_ text: String, endStream: Bool = false) throws {
            try stream.writeInbound(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer(string: text)), endStream: endStream)))
        }
    }

    @Test func bytesThatArriveWithTheRequestHeadReachTheStreamBehindIt() throws {
        let rig = try Rig()
        try rig.send("POST http://srv:8080/a HTTP/1.1\r\nHost: srv:8080\r\nContent-Length: 5\r\n\r\nhello"
            + "GET http://srv:8080/b HTTP/1.1\r\nHost: srv:8080\r\n\r\n")
        #expect(rig.dials.requested.map { "\($0.host):\($0.port)" } == ["srv:8080"])
        #expect(try rig.clientBytes() == "", "no answer before the stream is there")
        rig.open()
        let (request, _) = try rig.upstream()
        #expect(request.hasPrefix("POST /a HTTP/1.1\r\n"), "\(request)")
        #expect(request.contains("X-Tng-Http-Forward: true\r\n"))
        #expect(request.hasSuffix("\r\n\r\nhello"), "the body that came with the head follows it")
        #expect(!request.contains("/b"), "the pipelined request waits for its own stream")
        try rig.respond("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        let answer = try rig.clientBytes()
        #expect(answer.hasPrefix("HTTP/1.1 200 OK\r\n") && answer.hasSuffix("\r\n\r\nok"), "\(answer)")
        #expect(try rig.upstream().ended, "the stream is ended once the response has")
        #expect(rig.dials.requested.count == 2, "the pipelined request goes next, on a stream of its own")
    }

    @Test func halfCloseStillGetsTheResponseThenTheConnectionCloses() throws {
        let rig = try Rig()
        try rig.send("GET http://srv:8080/a HTTP/1.1\r\nHost: srv:8080\r\n\r\n")
        rig.client.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(rig.clientSide.closes.isEmpty, "EOF after a request: its response still comes")
        rig.open()
        #expect(try rig.upstream().text.hasPrefix("GET /a HTTP/1.1\r\n"))
        try rig.respond("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        #expect(try rig.clientBytes().hasSuffix("\r\n\r\nok"))
        #expect(rig.clientSide.closes == [.all], "then the connection closes")
    }

    @Test func aConnectCarriesTheBytesThatCameWithTheHeadAndAnEarlyEOF() throws {
        let rig = try Rig()
        try rig.send("CONNECT srv:443 HTTP/1.1\r\nHost: srv:443\r\n\r\nearly")
        rig.client.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(rig.dials.requested.map { "\($0.host):\($0.port)" } == ["srv:443"])
        rig.open()
        #expect(try rig.clientBytes() == "HTTP/1.1 200 Connection Established\r\n\r\n")
        let (sent, ended) = try rig.upstream()
        #expect(sent == "early")
        #expect(ended, "the client's EOF is END_STREAM, after the bytes")
        try rig.respond("answer", endStream: true)
        #expect(try rig.clientBytes() == "answer")
        #expect(rig.clientSide.closes == [.output], "END_STREAM back is a half-close")
    }

    @Test func aClientThatGoesAwayWhileTheStreamOpensHasItClosed() throws {
        let rig = try Rig()
        try rig.send("GET http://srv:8080/a HTTP/1.1\r\nHost: srv:8080\r\n\r\n")
        _ = try? rig.client.close().wait()
        rig.open()
        #expect(!rig.stream.isActive, "the stream that opened after all is closed at once")
        #expect(try rig.upstream().text == "")
    }

    @Test func aStreamResetBeforeTheGatewayAnswersIsA502() throws {
        let rig = try Rig()
        try rig.send("GET http://srv:8080/a HTTP/1.1\r\nHost: srv:8080\r\n\r\n")
        rig.dials.requested.first?.promise.fail(TunnelError.closedBeforeOpen(destination: "srv:8080", reason: "the gateway reset the stream (cancel)"))
        rig.loop.run()
        let answer = try rig.clientBytes()
        #expect(answer.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"), "\(answer)")
        #expect(answer.contains("caid tunnel: cannot open an attested tunnel to srv:8080: the tunnel to srv:8080 closed before the stream opened"))
        #expect(rig.clientSide.closes == [.all])

        let refused = try Rig()
        try refused.send("GET http://srv:8080/a HTTP/1.1\r\nHost: srv:8080\r\n\r\n")
        refused.dials.requested.first?.promise.fail(VerificationError("policy strict refused"))
        refused.loop.run()
        let forbidden = try refused.clientBytes()
        #expect(forbidden.hasPrefix("HTTP/1.1 403 Forbidden\r\n") && forbidden.contains("did not prove a trusted TEE"), "\(forbidden)")
    }

    @Test func aStreamClosedBeforeItsResponseIsA502AndAfterItsHeadCutsTheConnection() throws {
        let rig = try Rig()
        try rig.send("GET http://srv:8080/a HTTP/1.1\r\nHost: srv:8080\r\n\r\n")
        rig.open()
        _ = try? rig.stream.close().wait()
        #expect(try rig.clientBytes().hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"))

        let started = try Rig()
        try started.send("GET http://srv:8080/a HTTP/1.1\r\nHost: srv:8080\r\n\r\n")
        started.open()
        try started.respond("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        _ = try? started.stream.close().wait()
        #expect(try started.clientBytes().hasSuffix("half"))
        #expect(started.clientSide.closes == [.all])
    }

    @Test func readsAreHeldWhileTheStreamOpensAndWhileTheOtherSideIsFull() throws {
        let rig = try Rig()
        try rig.send("POST http://srv:8080/a HTTP/1.1\r\nHost: srv:8080\r\nContent-Length: 10\r\n\r\nhello")
        let opening = rig.clientSide.reads
        rig.client.read()
        #expect(rig.clientSide.reads == opening, "not read while the stream opens")
        rig.open()
        #expect(rig.clientSide.reads == opening + 1, "the held read goes once it is open")

        // Each way: while one side cannot take more, the other is not read; its held read goes once there is room.
        for (full, read, reads) in [(rig.stream, rig.client, rig.clientSide), (rig.client, rig.stream, rig.streamSide)] {
            let before = reads.reads
            full.isWritable = false
            full.pipeline.fireChannelWritabilityChanged()
            read.read()
            #expect(reads.reads == before, "\(full === rig.stream ? "stream" : "client") full: the other side is not read")
            full.isWritable = true
            full.pipeline.fireChannelWritabilityChanged()
            #expect(reads.reads == before + 1)
        }

        try rig.send("world")
        #expect(try rig.upstream().text.hasSuffix("\r\n\r\nhelloworld"))
    }

    @Test func bytesThatAreNotHTTPAreAnswered400() throws {
        let rig = try Rig()
        try? rig.send("\u{1}\u{2} not http\r\n\r\n")
        let answer = try rig.clientBytes()
        #expect(answer.hasPrefix("HTTP/1.1 400 Bad Request\r\n") && answer.contains("not an HTTP/1.x proxy request"), "\(answer)")
        #expect(rig.clientSide.closes == [.all])
        #expect(rig.dials.requested.isEmpty)
    }
}
