// Each pod's network for the pod's whole life: netns, CNI ADD, read the netns, rewire,
// serve DHCP, persist; and back again. recover() after a restart is setUp's second half
// run from the persisted state.
// Over 400 lines: setUp, tearDown and recover() are one pod lifecycle under one lock per
// pod; the guest's view, IPv6, rewiring and the guard are modules of their own.

import fs from "node:fs";
import type { CniClient, CniResult, NetworkStatus, PodAttachment } from "../cni-bridge/cni";
import { rewireInterface, rewireNames } from "../cni-bridge/rewire";
import { type DhcpLease, type DhcpLog, DhcpServer, type DhcpStats } from "../dhcp/server";
import type { Ipv6Server, Ipv6ServerStats } from "../dhcp6";
import { addDrops, InterfaceGuard } from "../guard/guard";
import type { Prefix, PrefixSlots } from "../guard/policy";
import { createNetns, deleteNetns, isNetns, netnsPath } from "../sys/netns";
import { Rtnl } from "../sys/rtnl";
import { openTap } from "../sys/tap";
import { KeyedLock } from "../util/keyed-lock";
import { Limiter } from "../util/limiter";
import { silentLog } from "../util/silent-log";
import { type StepHook, timeStep } from "../util/steps";
import { guestIpv6Of, withoutDefaultRoute6 } from "./guest-ipv6";
import { guestViewOf, leaseOf, readNicSnapshot, withoutDefaultRoute } from "./guest-network";
import { routeNicIpv6, serveNicIpv6 } from "./ipv6-service";
import { NetnsPool } from "./netns-pool";
import {
  closePreparedNic,
  PREPARED_IFNAME,
  type PreparedNic,
  prepareFirstNic,
} from "./prepare-nic";
import { type PersistedInterface, type PodRecord, PodStateStore, RECORD_VERSION } from "./state";
import type { OpenedTap, PodDrops, PodNetwork, PodNetworkRequest } from "./types";

export interface TapmanagerOptions {
  cni: CniClient;
  /** Where each pod's network description is kept, e.g. /var/lib/vmlet/pods. */
  stateDir: string;
  /** DHCP lease time; the addresses are static, so renewals only refresh it. */
  leaseSeconds?: number;
  log?: DhcpLog;
  /**
   * Pods whose network is built or torn down at once; the others wait their turn. Much of
   * the work is synchronous on the one thread (netns switches, eBPF verification, plugin
   * spawns): with hundreds at once, replies to one pod's netlink requests would wait
   * behind every other pod's work until its deadline passed. Default 8.
   */
  maxConcurrent?: number;
  /** Told each setUp and tearDown step's wall time (the benchmarks' breakdown). */
  steps?: StepHook;
  /**
   * Another runtime attaches pods to the same CNI networks (vmlet fronting containerd):
   * garbage collection then leaves the plugins' own GC alone, which would free its pods.
   */
  sharedNetworks?: boolean;
  /**
   * Network namespaces kept built ahead of pods (netns-pool.ts): a pod that takes one
   * skips the netns's creation and the first NIC's bridge, tap and guard loading. Each
   * costs the kernel a netns, a bridge and a tap while it waits. Default 0 (none); they
   * exist only between recover() or the first setUp and close().
   */
  netnsPool?: number;
}

/** setUp or tearDown of one pod failed; the message says what was cleaned up. */
export class PodNetworkError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PodNetworkError";
  }
}

const DEFAULT_LEASE_SECONDS = 86_400;
const DEFAULT_MAX_CONCURRENT = 8;
/**
 * Source prefix slots a NIC's guard program is loaded with per family for the NIC's own
 * addresses (its lease and CNI addresses), beside the annotation's; more are loaded for
 * the rare NIC that needs them.
 */
const OWN_PREFIX_SLOTS = 2;
/** A pooled NIC's slots: a pod with more extra prefixes has its tap's program reloaded. */
const OWN_SLOTS: PrefixSlots = { v4: OWN_PREFIX_SLOTS, v6: OWN_PREFIX_SLOTS };
/** The server id of a NIC whose network has no IPv4 gateway at all. */
const LINK_LOCAL_SERVER_ID = "169.254.255.254";

export interface RecoverOutcome {
  recovered: string[];
  removed: string[];
  /** Pods that could not be re-attached or removed; their records stay. */
  failed: { sandboxId: string; error: string }[];
}

/** The pod's netns after CNI ADD, with what was made ahead of the result. */
interface AddedNetns {
  attachments: PodAttachment[];
  /** The first NIC (PREPARED_IFNAME), made ahead, unless nothing could be overlapped. */
  early?: PreparedNic;
}

function podLabel(request: PodNetworkRequest): string {
  return `${request.pod.namespace}/${request.pod.name}`;
}

function netnsNameFor(sandboxId: string): string {
  return `vmlet-${sandboxId}`.slice(0, 63);
}

export class Tapmanager {
  private readonly store: PodStateStore;
  private readonly lock = new KeyedLock();
  private readonly limiter: Limiter;
  private readonly servers = new Map<string, DhcpServer[]>();
  /** Each pod's RA + DHCPv6 services, by sandbox id (only NICs with IPv6 have one). */
  private readonly ipv6Servers = new Map<string, Ipv6Server[]>();
  /** Each pod's guarded NICs, by sandbox id: where its drop counters are read. */
  private readonly guards = new Map<string, { ifname: string; guard: InterfaceGuard }[]>();
  private readonly log: DhcpLog;
  private readonly pool: NetnsPool | undefined;
  /** setUps and tearDowns running or waiting: the pool is refilled only at none. */
  private active = 0;

  constructor(private readonly options: TapmanagerOptions) {
    this.log = options.log ?? silentLog;
    if (options.netnsPool) {
      this.pool = new NetnsPool({
        size: options.netnsPool,
        owner: options.stateDir,
        prepare: (nsPath) => prepareFirstNic(nsPath, OWN_SLOTS, options.steps),
        busy: () => this.active > 0,
        log: this.log,
      });
    }
    this.limiter = new Limiter(options.maxConcurrent ?? DEFAULT_MAX_CONCURRENT);
    this.store = new PodStateStore(options.stateDir, (u) =>
      this.log.warn(
        { sandboxId: u.sandboxId, file: u.file, setAsideAs: u.setAsideAs, err: u.error },
        "unreadable pod network record set aside; that pod's network is not recovered",
      ),
    );
  }

  networkStatus(): NetworkStatus {
    return this.options.cni.status();
  }

  /** Builds the pod's network; returns at once with what exists if it is already built. */
  setUp(request: PodNetworkRequest): Promise<PodNetwork> {
    const id = request.pod.sandboxId;
    return this.counted(() =>
      this.lock.run(id, async () => {
        const existing = this.store.read(id);
        if (existing?.phase === "ready" && this.servers.has(id)) return this.describe(existing);
        return this.limiter.run(async () => {
          if (existing) await this.tearDownRecord(existing);
          try {
            return this.describe(await this.build(request));
          } catch (error) {
            const cleanup = await this.cleanUpAfter(id);
            throw new PodNetworkError(
              `setUp ${podLabel(request)}: ${(error as Error).message}; ${cleanup}`,
              { cause: error },
            );
          }
        });
      }),
    );
  }

  /** Runs a setUp or tearDown, counted as activity: the pool refills once none runs. */
  private async counted<T>(op: () => Promise<T>): Promise<T> {
    this.active++;
    try {
      return await op();
    } finally {
      if (--this.active === 0) this.pool?.idle();
    }
  }

  private async build(request: PodNetworkRequest): Promise<PodRecord> {
    const id = request.pod.sandboxId;
    const netnsName = netnsNameFor(id);
    // Recorded before anything exists, so a crash at any point can be cleaned up: atomic,
    // not fsynced. A crash of vmlet keeps it (the page cache outlives the process). What
    // a power cut must not lose is the IPAM allocation, the one thing of a pod network that
    // outlives a reboot: the CNI client records each attachment durably before its ADD,
    // and garbage collection at start (collectGarbage) deletes one whose record is gone.
    const record: PodRecord = {
      version: RECORD_VERSION,
      request,
      netnsName,
      netnsPath: netnsPath(netnsName),
      hostname: request.hostname ?? request.pod.name,
      phase: "creating",
      interfaces: [],
    };
    await this.timed("record creating", () => this.store.writeStep(record));
    const { attachments, early } = await this.netnsAndAdd(record);
    // One connection for all of it after ADD, the one that made the first NIC if there is
    // one: each link is looked up once (rtnl.ts).
    const rtnl = early?.rtnl ?? Rtnl.open(record.netnsPath);
    try {
      // Not recorded until ready: a crash before then leaves "creating", and recover()
      // tears that down, which is all a half-made pod gets anyway (the runtime tears down
      // a sandbox a crash caught being made, and setUp again starts afresh).
      record.interfaces = await this.step("read the netns", () =>
        this.discover(rtnl, record, attachments),
      );
      await this.configureOn(rtnl, record, early);
    } finally {
      rtnl.close();
      if (early) closePreparedNic(early); // what was not taken
    }
    record.phase = "ready";
    // Atomic, not fsynced: a crash of vmlet keeps it (the page cache outlives the
    // process); a power cut may lose it, and then recover() tears the pod down from the
    // durable "creating" record, as it would from "ready": after a reboot no netns is
    // left, and a pod whose netns is gone is torn down whatever its phase.
    await this.timed("record ready", () => this.store.writeStep(record));
    return record;
  }

  /**
   * The pod's netns and CNI ADD in it: a netns from the pool, prepared already, or else
   * a new one, prepared while ADD runs. Either way the first NIC made ahead comes back in
   * `early`, for configure() to take its parts.
   */
  private async netnsAndAdd(record: PodRecord): Promise<AddedNetns> {
    const pooled =
      this.pool &&
      (await this.timed("netns from the pool", () => this.pool?.take(record.netnsName)));
    if (!pooled) {
      await this.timed("netns create", () => createNetns(record.netnsName));
      return this.addWithEarlyWork(record);
    }
    try {
      const attachments = await this.timed("CNI ADD", () =>
        this.options.cni.addPod(record.request.pod, record.netnsPath, cniOptions(record.request)),
      );
      return { attachments, early: pooled.nic };
    } catch (error) {
      closePreparedNic(pooled.nic);
      throw error;
    }
  }

  /**
   * CNI ADD, and beside it, once the first plugin has started, what needs only the netns
   * (prepareDuringAdd): the plugins run as child processes for tens of milliseconds, and
   * this thread is free meanwhile. Both are settled before this returns or throws, so a
   * failure of either leaves nothing being built behind the teardown.
   */
  private async addWithEarlyWork(record: PodRecord): Promise<AddedNetns> {
    const { request } = record;
    let started: () => void = () => {};
    const pluginStarted = new Promise<boolean>((resolve) => {
      started = () => resolve(true);
    });
    const add = this.timed("CNI ADD", () =>
      this.options.cni.addPod(request.pod, record.netnsPath, {
        ...cniOptions(request),
        onPluginStart: started,
      }),
    );
    let nic: PreparedNic | undefined;
    const earlyWork = (async () => {
      // An ADD that fails before any plugin starts (none found) leaves nothing to overlap.
      const go = await Promise.race([
        pluginStarted,
        add.then(
          () => false,
          () => false,
        ),
      ]);
      if (go) {
        await this.step("early work (during ADD)", async () => {
          const slots = prefixSlots(record.request);
          nic = await prepareFirstNic(record.netnsPath, slots, this.options.steps);
        });
      }
    })();
    const [added, prepared] = await Promise.allSettled([add, earlyWork]);
    if (added.status === "rejected" || prepared.status === "rejected") {
      if (nic) closePreparedNic(nic);
      throw added.status === "rejected" ? added.reason : (prepared as PromiseRejectedResult).reason;
    }
    return { attachments: added.value, ...(nic ? { early: nic } : {}) };
  }

  /** Reads what CNI built for each attachment into the guest's side of the network. */
  private async discover(
    rtnl: Rtnl,
    record: PodRecord,
    attachments: PodAttachment[],
  ): Promise<PersistedInterface[]> {
    const out: PersistedInterface[] = [];
    for (const [i, attachment] of attachments.entries()) {
      // One read of the link, its addresses and its routes, for both families.
      const snapshot = await readNicSnapshot(rtnl, attachment.ifname);
      const read = { ...guestViewOf(snapshot), mac: snapshot.link.mac };
      const view = i === 0 ? read : withoutDefaultRoute(read);
      const read6 = guestIpv6Of(snapshot.link, snapshot.addresses, snapshot.routes);
      const ipv6 = read6 && (i === 0 ? read6 : withoutDefaultRoute6(read6));
      const names = rewireNames(attachment.ifname);
      const dns = this.dnsFor(record.request, attachment.result);
      const serverId = view.gateway ?? cniGateway(attachment.result) ?? LINK_LOCAL_SERVER_ID;
      out.push({
        ifname: attachment.ifname,
        network: attachment.network,
        bridge: names.bridge,
        tap: names.tap,
        guestMac: read.mac,
        mtu: view.mtu,
        addresses: view.addresses,
        routes: view.routes,
        dns,
        serverId,
        ...(view.gateway ? { gateway: view.gateway } : {}),
        ...(view.ipv4 ? { ipv4: view.ipv4 } : {}),
        ...(ipv6
          ? { ipv6: { ...ipv6, nameservers: ipv6Nameservers(record.request, attachment.result) } }
          : {}),
      });
    }
    return out;
  }

  private dnsFor(
    request: PodNetworkRequest,
    result: CniResult,
  ): PodNetwork["interfaces"][0]["dns"] {
    // kubelet's DNS config for the pod (cluster DNS) wins over what the plugin reported.
    const nameservers = request.dns?.servers.length
      ? request.dns.servers
      : (result.dns.nameservers ?? []);
    const search = request.dns?.searches.length ? request.dns.searches : (result.dns.search ?? []);
    // Clients whose scripts ignore option 119 (Debian's udhcpc) still get the first
    // search domain through option 15.
    const domain = result.dns.domain ?? search[0];
    return {
      nameservers: nameservers.filter((s) => !s.includes(":")),
      search,
      ...(domain ? { domain } : {}),
    };
  }

  /** recover()'s configure, on a connection of its own. */
  private configure(record: PodRecord): Promise<void> {
    return this.withRtnl(record, (rtnl) => this.configureOn(rtnl, record));
  }

  /**
   * Rewires every interface and serves DHCP on it: setUp's second half and recover(), all
   * on `rtnl` (rewiring, the guards, the servers). `early` is the first NIC as made
   * ahead: its bridge and tap are used, its guard attached, its DHCP socket served on. The servers' reply caches are attached
   * after this returns (DeferredAttach): until then the servers answer every request.
   */
  private async configureOn(rtnl: Rtnl, record: PodRecord, early?: PreparedNic): Promise<void> {
    const ahead = (ifname: string) => (ifname === PREPARED_IFNAME ? early : undefined);
    const id = record.request.pod.sandboxId;
    await this.stopServing(id);
    const servers: DhcpServer[] = [];
    this.servers.set(id, servers);
    this.closeGuards(id);
    const guards: { ifname: string; guard: InterfaceGuard }[] = [];
    this.guards.set(id, guards);
    for (const iface of record.interfaces) {
      const names = { ifname: iface.ifname, bridge: iface.bridge, tap: iface.tap };
      await this.step(
        `rewire ${iface.ifname}`,
        () =>
          rewireInterface(
            rtnl,
            record.netnsPath,
            names,
            {
              addresses: iface.addresses,
              routes: iface.routes,
              mtu: iface.mtu,
              mac: iface.guestMac,
            },
            this.options.steps,
            ahead(iface.ifname) !== undefined,
          ),
        "rewire",
      );
      await this.step(`route IPv6 of ${iface.ifname}`, () =>
        routeNicIpv6(rtnl, record.netnsPath, iface),
      );
    }
    // Guarded before DHCP serves and before any VM gets the tap.
    for (const iface of record.interfaces) {
      const links = { tap: iface.tap, veth: iface.ifname, bridge: iface.bridge };
      const policy = {
        guestMac: iface.guestMac,
        prefixes: sourcePrefixes(record, iface),
        routesIpv6: iface.ipv6 !== undefined,
      };
      const prepared = ahead(iface.ifname)?.guard;
      const guard = await this.step(
        `guard ${iface.tap}`,
        () =>
          prepared
            ? prepared.attach(rtnl, links, policy, this.options.steps)
            : InterfaceGuard.attach(record.netnsPath, links, policy, this.options.steps, rtnl),
        prepared ? "guard (fill + attach)" : "guard (BPF load + attach)",
      );
      guards.push({ ifname: iface.ifname, guard });
    }
    for (const iface of record.interfaces) {
      const lease = this.leaseFor(record, iface);
      if (!lease) continue;
      const nic = ahead(iface.ifname);
      const socketFd = nic?.dhcpSocketFd;
      if (nic) nic.dhcpSocketFd = undefined; // the server's now, whatever becomes of it
      const server = await this.step(
        `serve DHCP on ${iface.bridge}`,
        () =>
          DhcpServer.start({
            nsPath: record.netnsPath,
            device: iface.bridge,
            serverId: iface.serverId,
            leases: [lease],
            log: this.log,
            // The guard on the tap steers the guest's DHCP to the server itself.
            intercept: false,
            // Replies to requests seen before come from the kernel, back into the tap,
            // once the cache is attached, after setUp; the socket answers until then.
            replyPort: iface.tap,
            replyCacheInBackground: true,
            rtnl,
            ...(socketFd === undefined ? {} : { socketFd }),
            ...(this.options.steps ? { steps: this.options.steps } : {}),
          }),
        "DHCP ready",
      );
      servers.push(server);
    }
    const ipv6Servers: Ipv6Server[] = [];
    this.ipv6Servers.set(id, ipv6Servers);
    for (const iface of record.interfaces) {
      const server = await this.step(`serve RA and DHCPv6 on ${iface.bridge}`, () =>
        serveNicIpv6(
          rtnl,
          record.netnsPath,
          iface,
          this.options.leaseSeconds ?? DEFAULT_LEASE_SECONDS,
          this.log,
          this.options.steps,
        ),
      );
      if (server) ipv6Servers.push(server);
    }
  }

  /** Undoes everything in reverse; a pod that is not there is fine (kubelet retries). */
  tearDown(sandboxId: string): Promise<void> {
    return this.counted(() =>
      this.lock.run(sandboxId, async () => {
        const record = this.store.read(sandboxId);
        if (record) {
          await this.limiter.run(() => this.tearDownRecord(record));
          return;
        }
        // No record (never made, or set aside as unreadable): its netns may still be there,
        // under the name only vmlet gives; CNI GC frees what it held.
        const netnsName = netnsNameFor(sandboxId);
        if (isNetns(netnsPath(netnsName))) deleteNetns(netnsName);
      }),
    );
  }

  private async tearDownRecord(record: PodRecord): Promise<void> {
    const id = record.request.pod.sandboxId;
    const label = podLabel(record.request);
    // Replies the kernel's caches sent (DHCPv4, DHCPv6): gone with the servers.
    const dhcpKernelReplies =
      this.dhcpStats(id).reduce((n, s) => n + (s.kernel?.hits ?? 0), 0) +
      this.ipv6Stats(id).reduce((n, s) => n + (s.dhcp6.kernel?.hits ?? 0), 0);
    // The netns is deleted below: the servers only let go of their sockets and maps, and
    // leave their addresses, routes and filters to that. If CNI DEL fails first, the
    // netns keeps them, as after a crash of vmlet, until the retried teardown deletes it.
    await this.timed("DHCP stop", () => this.stopServing(id, { netnsGoing: true }));
    const drops = this.dropCounts(id);
    if (drops) {
      this.log.info(
        { pod: label, sandboxId: id, drops, dhcpKernelReplies },
        "guest isolation drops",
      );
    }
    this.closeGuards(id);
    // The taps and bridges are not deleted one by one before the netns goes: each
    // RTM_DELLINK waits out an RCU grace period (~35 ms apiece here, two per NIC), while
    // the kernel removes whatever a deleted netns still holds in one batch, off this path.
    // CNI DEL removes its veth by name, as it does in a container's netns.
    const present = isNetns(record.netnsPath);
    try {
      await this.timed("CNI DEL", () =>
        this.options.cni.delPod(record.request.pod, present ? record.netnsPath : undefined),
      );
    } catch (error) {
      throw new PodNetworkError(`tearDown ${label}: CNI DEL: ${(error as Error).message}`, {
        cause: error,
      });
    }
    await this.timed("netns delete", () => deleteNetns(record.netnsName));
    await this.timed("record remove", () => this.store.remove(id));
  }

  /** After a failed setUp: everything the record says may exist is removed. */
  private async cleanUpAfter(sandboxId: string): Promise<string> {
    const record = this.store.read(sandboxId);
    if (!record) return "nothing to clean up";
    try {
      await this.tearDownRecord(record);
      return "cleaned up: DHCP, taps, bridges, CNI attachments, netns and state";
    } catch (error) {
      return `cleanup failed, state kept for a retry: ${(error as Error).message}`;
    }
  }

  /**
   * Resolves once the kernel reply caches of the pod's DHCP and DHCPv6 servers, attached
   * after setUp returns, are attached (true) or have failed (false; the servers answer
   * every request themselves).
   */
  async replyCachesSettled(sandboxId: string): Promise<boolean> {
    const settled = await Promise.all([
      ...(this.servers.get(sandboxId) ?? []).map((s) => s.replyCacheSettled()),
      ...(this.ipv6Servers.get(sandboxId) ?? []).map((s) => s.replyCacheSettled()),
    ]);
    return settled.every(Boolean);
  }

  /** What each of the pod's DHCP servers received, answered and dropped, by interface. */
  dhcpStats(sandboxId: string): DhcpStats[] {
    return (this.servers.get(sandboxId) ?? []).map((server) => server.stats());
  }

  /**
   * What the pod's guest isolation dropped since its network was configured by this
   * process (a restart starts the counters again); undefined for a pod not guarded here.
   */
  dropCounts(sandboxId: string): PodDrops | undefined {
    const guards = this.guards.get(sandboxId);
    if (!guards) return undefined;
    const interfaces = guards.map(({ ifname, guard }) => ({ ifname, drops: guard.drops() }));
    return {
      total: interfaces.reduce((sum, i) => addDrops(sum, i.drops), {}),
      interfaces,
    };
  }

  private closeGuards(sandboxId: string): void {
    for (const { guard } of this.guards.get(sandboxId) ?? []) guard.close();
    this.guards.delete(sandboxId);
  }

  get(sandboxId: string): PodNetwork | undefined {
    const record = this.store.read(sandboxId);
    return record?.phase === "ready" ? this.describe(record) : undefined;
  }

  list(): PodNetwork[] {
    return this.store
      .list()
      .map((id) => this.get(id))
      .filter((n): n is PodNetwork => n !== undefined);
  }

  /** Opens the pod's taps for a VM, in interface order. The caller closes the fds. */
  openTaps(sandboxId: string): OpenedTap[] {
    const record = this.store.read(sandboxId);
    if (record?.phase !== "ready") {
      throw new PodNetworkError(`open taps of sandbox ${sandboxId}: no ready pod network`);
    }
    const opened: OpenedTap[] = [];
    try {
      for (const iface of record.interfaces) {
        const tap = openTap(record.netnsPath, { name: iface.tap });
        opened.push({
          ifname: iface.ifname,
          tap: tap.name,
          fd: tap.fd,
          guestMac: iface.guestMac,
          mtu: iface.mtu,
        });
      }
    } catch (error) {
      for (const t of opened) fs.closeSync(t.fd);
      throw new PodNetworkError(
        `open taps of ${podLabel(record.request)}: ${(error as Error).message}`,
        { cause: error },
      );
    }
    return opened;
  }

  /**
   * Re-attaches every pod network after a restart: ready and half-wired pods are
   * configured again from their records, pods caught while creating are torn down. A pod
   * that fails does not stop the others: it is reported, and its record stays (not
   * ready) for the runtime to report and for a tearDown to clean up.
   */
  async recover(): Promise<RecoverOutcome> {
    const outcome: RecoverOutcome = { recovered: [], removed: [], failed: [] };
    await this.store.open();
    const swept = this.pool?.sweep() ?? [];
    if (swept.length > 0) {
      this.log.info({ netns: swept }, "removed the netns pool a previous vmlet left");
    }
    for (const id of this.store.list()) {
      await this.lock.run(id, async () => {
        let record: PodRecord | undefined;
        try {
          record = this.store.read(id);
        } catch (error) {
          outcome.failed.push({ sandboxId: id, error: `read: ${(error as Error).message}` });
          return;
        }
        if (!record) return;
        const removing = record.phase === "creating" || !isNetns(record.netnsPath);
        try {
          if (removing) {
            await this.tearDownRecord(record);
            outcome.removed.push(id);
            return;
          }
          await this.configure(record);
          record.phase = "ready";
          await this.store.write(record);
          outcome.recovered.push(id);
        } catch (error) {
          await this.stopServing(id).catch(() => {});
          if (!removing && record.phase === "ready") {
            record.phase = "wiring";
            await this.store.write(record);
          }
          const what = removing ? "remove" : "re-attach";
          outcome.failed.push({
            sandboxId: id,
            error: `${what} ${podLabel(record.request)}: ${(error as Error).message}`,
          });
        }
      });
    }
    this.pool?.idle();
    return outcome;
  }

  /** Resolves once the netns pool is full or has stopped refilling (tests, benchmarks). */
  async netnsPoolSettled(): Promise<number> {
    await this.pool?.settled();
    return this.pool?.size ?? 0;
  }

  /**
   * CNI garbage collection for the one runtime that owns this node's attachments (never
   * `net run`): attachments cached for sandboxes with no record here (a record lost or
   * unreadable) are deleted, releasing their addresses; 1.1.0 plugins are told which
   * attachments are still in use. Run it after recover(), before serving: a pod set up
   * in between would have a cached attachment and no record yet.
   */
  async collectGarbage(): Promise<void> {
    await this.options.cni.gc(this.store.list(), { pluginGc: !this.options.sharedNetworks });
  }

  /** Stops every DHCP server; the networks stay for the next start to recover. The pool goes. */
  async close(): Promise<void> {
    await this.pool?.close();
    for (const id of new Set([...this.servers.keys(), ...this.ipv6Servers.keys()])) {
      await this.stopServing(id);
    }
    // The filters stay: the guests keep running, guarded, until the next start.
    for (const id of [...this.guards.keys()]) this.closeGuards(id);
  }

  /** With `netnsGoing` only for a netns deleted next: see DhcpServer.close. */
  private async stopServing(
    sandboxId: string,
    options: { netnsGoing?: boolean } = {},
  ): Promise<void> {
    const servers = this.servers.get(sandboxId) ?? [];
    this.servers.delete(sandboxId);
    for (const server of servers) await server.close(options);
    const ipv6Servers = this.ipv6Servers.get(sandboxId) ?? [];
    this.ipv6Servers.delete(sandboxId);
    for (const server of ipv6Servers) await server.close(options);
  }

  /** What each of the pod's RA + DHCPv6 services received, answered and dropped. */
  ipv6Stats(sandboxId: string): Ipv6ServerStats[] {
    return (this.ipv6Servers.get(sandboxId) ?? []).map((server) => server.stats());
  }

  private describe(record: PodRecord): PodNetwork {
    return {
      pod: record.request.pod,
      netnsPath: record.netnsPath,
      hostname: record.hostname,
      interfaces: record.interfaces.map(({ serverId: _s, ipv4: _i, ...iface }) => iface),
    };
  }

  private leaseFor(record: PodRecord, iface: PersistedInterface): DhcpLease | undefined {
    const seconds = this.options.leaseSeconds ?? DEFAULT_LEASE_SECONDS;
    return leaseOf(iface, record.hostname, seconds);
  }

  /** What each NIC's guest is served by DHCP (the NICs without IPv4 left out). */
  leases(sandboxId: string): DhcpLease[] {
    const record = this.store.read(sandboxId);
    if (!record) return [];
    return record.interfaces.flatMap((iface) => this.leaseFor(record, iface) ?? []);
  }

  private withRtnl<T>(record: PodRecord, fn: (rtnl: Rtnl) => Promise<T>): Promise<T> {
    return Rtnl.using(record.netnsPath, fn);
  }

  private timed<T>(step: string, work: () => Promise<T> | T): Promise<T> {
    return timeStep(this.options.steps, step, work);
  }

  /** A step whose failure names it; `timedAs` groups per-NIC steps in the breakdown. */
  private async step<T>(name: string, fn: () => Promise<T>, timedAs = name): Promise<T> {
    try {
      return await this.timed(timedAs, fn);
    } catch (error) {
      throw new Error(`${name}: ${(error as Error).message}`, { cause: error });
    }
  }
}

/** What a NIC's guest may send from: its lease, its CNI addresses, the pod's extra prefixes. */
function sourcePrefixes(record: PodRecord, iface: PersistedInterface): Prefix[] {
  const own: Prefix[] = iface.addresses.map((a) => ({
    family: a.family,
    address: a.address,
    prefixLength: a.family === 4 ? 32 : 128,
  }));
  // The lease is mostly one of the CNI addresses: one slot of the guard's is enough.
  if (iface.ipv4 && !own.some((p) => p.family === 4 && p.address === iface.ipv4?.address)) {
    own.push({ family: 4, address: iface.ipv4.address, prefixLength: 32 });
  }
  return [...own, ...(record.request.allowedSourcePrefixes ?? [])];
}

/** The guard's prefix slots for a NIC of this pod, before its addresses are known. */
function prefixSlots(request: PodNetworkRequest): PrefixSlots {
  const extra = request.allowedSourcePrefixes ?? [];
  const count = (family: 4 | 6) => extra.filter((p) => p.family === family).length;
  return { v4: OWN_PREFIX_SLOTS + count(4), v6: OWN_PREFIX_SLOTS + count(6) };
}

/** What a pod's request tells CNI ADD beside the netns. */
function cniOptions(request: PodNetworkRequest): {
  networks?: string[];
  capabilities?: PodNetworkRequest["capabilities"];
} {
  return {
    ...(request.networks ? { networks: request.networks } : {}),
    ...(request.capabilities ? { capabilities: request.capabilities } : {}),
  };
}

/** The pod's IPv6 DNS servers: kubelet's, else the plugin's, as for IPv4. */
function ipv6Nameservers(request: PodNetworkRequest, result: CniResult): string[] {
  const all = request.dns?.servers.length ? request.dns.servers : (result.dns.nameservers ?? []);
  return all.filter((s) => s.includes(":"));
}

function cniGateway(result: CniResult): string | undefined {
  return result.ips.find((ip) => ip.gateway && !ip.gateway.includes(":"))?.gateway;
}
