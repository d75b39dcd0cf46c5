// The CRI socket's listener: vmlet accepts each connection itself and hands it to grpc-js
// through a connection injector. A client whose first request carries :authority
// "localhost" (grpc-js, kubelet 1.27+, C-core < 1.57) gets grpc-js on the socket itself;
// any other goes on through the rewriter (h2-rewriter.ts) for the connection's life.
// (A gRPC channel keeps one authority for all its calls, so the first request decides.)
// Same process, same event loop; server-to-client bytes are written as grpc-js gives them.
import net from "node:net";
import { Duplex } from "node:stream";
import type { Logger } from "pino";
import { type AuthoritySeen, ClientStreamRewriter, H2FrameError } from "./h2-rewriter";

/** What grpc-js's `Server#createConnectionInjector` returns (grpc-js >= 1.10). */
export interface Injector {
  injectConnection(connection: Duplex): void;
}

export class AuthorityFront {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private nextId = 0;

  constructor(
    private readonly injector: Injector,
    private readonly logger: Logger,
  ) {
    this.server = net.createServer((socket) => this.accept(socket));
  }

  listen(socketPath: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(socketPath, () => {
        this.server.off("error", reject);
        resolve();
      });
    });
  }

  /** Stops accepting; connections already made stay with grpc-js until it closes them. */
  stopAccepting(): void {
    this.server.close();
  }

  /** Cuts whatever connection grpc-js has not closed. */
  destroyAll(): void {
    for (const socket of this.sockets) socket.destroy();
  }

  private accept(socket: net.Socket): void {
    const id = ++this.nextId;
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    socket.on("error", (error) =>
      this.logger.debug({ connection: id, err: error }, "CRI connection error"),
    );
    let lastAuthority: string | undefined | null = null; // null: nothing logged yet
    let requested = false;
    const rewriter = new ClientStreamRewriter({
      dropFirstSettingsAck: true,
      onRequest: (seen: AuthoritySeen) => {
        requested = true;
        // One debug line per connection and authority, not per call: what a user checks
        // with --log-level debug to see which clients needed the rewrite.
        if (seen.original === lastAuthority) return;
        lastAuthority = seen.original;
        this.logger.debug(
          { connection: id, authority: seen.original ?? null, rewritten: seen.rewritten },
          "CRI client authority",
        );
      },
    });
    // Until the first request shows whether this client needs the rewrite, the front
    // answers the client's preface itself (an empty SETTINGS: clients such as grpc-go
    // wait for one before their first call) and holds what the client sends.
    socket.write(EMPTY_SETTINGS);
    let held: Buffer[] = [];
    let heldBytes = 0;
    let connection: Duplex | undefined;
    const timer = setTimeout(() => toDuplex(), SNIFF_MS);
    const toDuplex = () => {
      if (connection) return;
      clearTimeout(timer);
      connection = spliced(socket);
      this.logger.debug({ connection: id, via: "rewriter" }, "CRI connection handed to grpc-js");
      this.injector.injectConnection(connection);
      for (const bytes of held) connection.push(bytes);
      held = [];
    };
    const toNative = () => {
      // No rewrite needed: grpc-js gets the socket itself, with what was held put back.
      clearTimeout(timer);
      socket.pause();
      socket.off("data", onData);
      socket.off("end", onEnd);
      socket.off("close", onClose);
      socket.unshift(Buffer.concat(held));
      held = [];
      this.logger.debug({ connection: id, via: "socket" }, "CRI connection handed to grpc-js");
      this.injector.injectConnection(socket);
    };
    const onData = (chunk: Buffer) => {
      let out: Buffer[];
      try {
        out = rewriter.push(chunk);
      } catch (error) {
        const level = error instanceof H2FrameError ? "warn" : "error";
        this.logger[level](
          { connection: id, err: error },
          `CRI connection ${id} closed: malformed HTTP/2 from the client`,
        );
        clearTimeout(timer);
        socket.destroy();
        connection?.destroy();
        return;
      }
      if (connection) {
        let more = true;
        for (const bytes of out) more = connection.push(bytes);
        if (!more) socket.pause();
        return;
      }
      held.push(...out);
      heldBytes += chunk.length;
      if (rewriter.isRewriting || heldBytes > MAX_HELD) toDuplex();
      else if (requested && rewriter.firstSettingsAckDropped) toNative();
    };
    const onEnd = () => {
      toDuplex();
      connection?.push(null);
    };
    const onClose = () => {
      clearTimeout(timer);
      connection?.destroy();
    };
    socket.on("data", onData);
    socket.on("end", onEnd);
    socket.on("close", onClose);
  }
}

/** An HTTP/2 SETTINGS frame with no parameters (RFC 9113 6.5): the server preface. */
const EMPTY_SETTINGS = Buffer.from([0, 0, 0, 0x04, 0, 0, 0, 0, 0]);
/**
 * How long the front holds a connection that has not shown its first request (kubelet
 * calls Version as soon as it has dialed); one that takes longer goes through the rewriter.
 */
const SNIFF_MS = 1000;
/** How much it holds at most before it commits to rewriting. */
const MAX_HELD = 512 * 1024;

/**
 * The stream grpc-js reads the rewritten client bytes from (pushed by the front) and
 * writes its own bytes to, straight onto the socket.
 */
function spliced(socket: net.Socket): Duplex {
  return new Duplex({
    read: () => {
      socket.resume();
    },
    write: (chunk: Buffer, _encoding, callback) => {
      if (socket.write(chunk)) callback();
      else socket.once("drain", () => callback());
    },
    writev: (chunks, callback) => {
      socket.cork();
      let flushed = true;
      for (const { chunk } of chunks) flushed = socket.write(chunk as Buffer);
      socket.uncork();
      if (flushed) callback();
      else socket.once("drain", () => callback());
    },
    final: (callback) => {
      socket.end(() => callback());
    },
    destroy: (error, callback) => {
      socket.destroy();
      callback(error);
    },
  });
}
