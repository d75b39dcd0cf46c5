// Launcher errors name the VM (container id), the step and the object:
// `vm 3f2a…: start: qemu-img create /var/lib/vmlet/…/root.qcow2: exit 1: …`.

export class VmError extends Error {
  readonly vmId: string;
  readonly step: string;
  constructor(vmId: string, step: string, message: string, options?: { cause?: unknown }) {
    super(`vm ${vmId}: ${step}: ${message}`, options);
    this.name = new.target.name;
    this.vmId = vmId;
    this.step = step;
  }
}

/** The spec cannot be turned into a QEMU command line (bad MAC, MTU, sizes, ids). */
export class VmSpecError extends VmError {}

/** A QMP command failed, or the QMP connection broke. */
export class QmpError extends Error {
  readonly errorClass: string | undefined;
  constructor(message: string, errorClass?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.errorClass = errorClass;
  }
}
