// Capability arguments (CONVENTIONS.md): what the runtime offers, and the part of it a
// plugin receives as runtimeConfig because it declared the capability.

export interface PortMapping {
  hostPort: number;
  containerPort: number;
  protocol?: "tcp" | "udp" | "sctp";
  hostIP?: string;
}

export interface RuntimeConfig {
  portMappings?: PortMapping[];
  dns?: { servers?: string[]; searches?: string[]; options?: string[] };
  ips?: string[];
  mac?: string;
  bandwidth?: {
    ingressRate?: number;
    ingressBurst?: number;
    egressRate?: number;
    egressBurst?: number;
  };
  [capability: string]: unknown;
}

/** The capability args this plugin declared and the runtime provided. */
export function runtimeConfigFor(
  declared: Record<string, boolean>,
  offered: RuntimeConfig,
): RuntimeConfig | undefined {
  const out: RuntimeConfig = {};
  let any = false;
  for (const [k, v] of Object.entries(offered)) {
    if (declared[k] && v !== undefined) {
      out[k] = v;
      any = true;
    }
  }
  return any ? out : undefined;
}
