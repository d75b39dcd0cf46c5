// Readiness for the fds Node cannot watch itself (dgram adopts UDP sockets only, and
// names a link-local sender by an interface of vmlet's own netns): each is watched by a
// uv_poll handle on Node's own event loop, called through koffi from the libuv that Node
// exports. The handler runs on the main thread as libuv finds the fd readable, as a
// dgram socket's would: no thread hand-off. It needs a node binary that exports libuv's
// symbols (Debian's and nodejs.org's do); one that hides them fails here at load, loudly.
import koffi from "koffi";

export type ReadableHandler = () => void;

const self = koffi.load(null);
// uv.h: uv_handle_type UV_POLL, uv_poll_event UV_READABLE.
const UV_POLL = 8;
const UV_READABLE = 1;
const PollCallback = koffi.proto("void vmlet_uv_poll_cb(void *handle, int status, int events)");
const CloseCallback = koffi.proto("void vmlet_uv_close_cb(void *handle)");
const uvDefaultLoop = self.func("void *uv_default_loop(void)");
const uvHandleSize = self.func("size_t uv_handle_size(int type)");
const uvPollInit = self.func("int uv_poll_init(void *loop, void *handle, int fd)");
const uvPollStart = self.func("int uv_poll_start(void *handle, int events, vmlet_uv_poll_cb *cb)");
const uvPollStop = self.func("int uv_poll_stop(void *handle)");
const uvClose = self.func("void uv_close(void *handle, vmlet_uv_close_cb *cb)");
const uvStrerror = self.func("const char *uv_strerror(int err)");

interface Watch {
  /** The uv_poll_t's memory: libuv holds a pointer to it until the close callback. */
  handle: Buffer;
  callback: ReturnType<typeof koffi.register>;
}

class Poller {
  private readonly watched = new Map<number, Watch>();
  private readonly handleSize = Number(uvHandleSize(UV_POLL));

  /** Calls `onReadable` on the main thread whenever `fd` has data. */
  watch(fd: number, onReadable: ReadableHandler): void {
    if (this.watched.has(fd)) throw new Error(`poller: fd ${fd} is watched already`);
    const handle = Buffer.alloc(this.handleSize);
    const init = uvPollInit(uvDefaultLoop(), handle, fd);
    if (init !== 0) throw new Error(`uv_poll_init fd ${fd}: ${uvStrerror(init)}`);
    const callback = koffi.register(() => {
      try {
        onReadable();
      } catch {
        // a handler's own failure is its to count; the loop keeps serving the rest
      }
    }, koffi.pointer(PollCallback));
    const started = uvPollStart(handle, UV_READABLE, callback);
    if (started !== 0) {
      koffi.unregister(callback);
      throw new Error(`uv_poll_start fd ${fd}: ${uvStrerror(started)}`);
    }
    this.watched.set(fd, { handle, callback });
  }

  /** Stops watching `fd`; `close` runs (closing the fd) once libuv has let go of it. */
  unwatch(fd: number, close: () => void): void {
    const watch = this.watched.get(fd);
    if (!watch) {
      close();
      return;
    }
    this.watched.delete(fd);
    uvPollStop(watch.handle);
    koffi.unregister(watch.callback);
    // The callback holds `watch` (and so the handle's memory) until libuv is done with it.
    const closed = koffi.register(() => {
      koffi.unregister(closed);
      close();
      watch.handle.fill(0);
    }, koffi.pointer(CloseCallback));
    uvClose(watch.handle, closed);
  }
}

export const poller = new Poller();
