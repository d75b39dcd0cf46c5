// Something a server attaches after its start() returned, off the caller's critical path
// (the DHCP servers' kernel reply caches): begun a turn of the event loop later, so the
// caller's next steps go first. Until it is attached its owner works without it, so it
// must be an optimisation, never a dependency. detach() stops one not begun yet, waits
// for one under way, and then detaches what was attached: nothing is left behind.

export interface Detachable {
  /** Options, if any, are passed through from DeferredAttach.detach. */
  detach(options?: never): Promise<void>;
}

/** What `T`'s detach takes. */
type DetachOptions<T extends Detachable> = Parameters<T["detach"]>[0];

export class DeferredAttach<T extends Detachable> {
  private attached: T | undefined;
  private stopped = false;
  private settled: Promise<void> = Promise.resolve();

  private constructor() {}

  /**
   * `attach` runs a turn later unless detach() came first; `onError` is told why it
   * failed (the owner goes on without it).
   */
  static later<T extends Detachable>(
    attach: () => Promise<T>,
    onError: (error: unknown) => void,
  ): DeferredAttach<T> {
    const slot = new DeferredAttach<T>();
    slot.settled = new Promise<void>((resolve) => setImmediate(resolve))
      .then(async () => {
        if (slot.stopped) return;
        const attached = await attach();
        if (slot.stopped) {
          await attached.detach(); // detach() came while it was being attached
          return;
        }
        slot.attached = attached;
      })
      .catch(onError);
    return slot;
  }

  /** One its owner attached itself, before going on. */
  static now<T extends Detachable>(attached: T): DeferredAttach<T> {
    const slot = new DeferredAttach<T>();
    slot.attached = attached;
    return slot;
  }

  /** What is attached now; undefined before (or without) it. */
  get current(): T | undefined {
    return this.attached;
  }

  /** Resolves once the attach is done, failed or stopped: true if attached. */
  async whenSettled(): Promise<boolean> {
    await this.settled;
    return this.attached !== undefined;
  }

  /** Stops or waits out the attach, then detaches what it made, with `options`. */
  async detach(options?: DetachOptions<T>): Promise<void> {
    this.stopped = true;
    await this.settled;
    const attached = this.attached;
    this.attached = undefined;
    await attached?.detach(options as never);
  }
}
