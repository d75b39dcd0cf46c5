// The CRI socket's listener: vmlet accepts each connection itself and hands it to grpc-js
// through a connection injector, with the client's header blocks passed through the
// rewriter (h2-rewriter.ts) so any gRPC client's :authority is served. Same process,
// same event loop; server-to-client bytes are written as grpc-js gives them.
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
    let lastAuthority: string | undefined | null = null; // null: nothing logged yet
    const rewriter = new ClientStreamRewriter({
      onRequest: (seen: AuthoritySeen) => {
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
    const connection = new Duplex({
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
    socket.on("data", (chunk: Buffer) => {
      let out: Buffer[];
      try {
        out = rewriter.push(chunk);
      } catch (error) {
        const level = error instanceof H2FrameError ? "warn" : "error";
        this.logger[level](
          { connection: id, err: error },
          `CRI connection ${id} closed: malformed HTTP/2 from the client`,
        );
        socket.destroy();
        connection.destroy();
        return;
      }
      let more = true;
      for (const bytes of out) more = connection.push(bytes);
      if (!more) socket.pause();
    });
    socket.on("end", () => connection.push(null));
    socket.on("error", (error) =>
      this.logger.debug({ connection: id, err: error }, "CRI connection error"),
    );
    socket.on("close", () => {
      this.sockets.delete(socket);
      connection.destroy();
    });
    this.injector.injectConnection(connection);
  }
}
