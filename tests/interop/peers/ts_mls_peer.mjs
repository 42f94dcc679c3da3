// Interop peer: ts-mls (an independent TypeScript implementation of RFC 9420).
//
// One process holds any number of ts-mls members, each named by the request's "who".  Every
// handshake and application message in and out is an MLSMessage in wire format (hex), so the
// Python side sees exactly what a delivery service would carry.
import {
  acceptAll,
  createApplicationMessage,
  createCommit,
  createGroup,
  createGroupInfoWithExternalPubAndRatchetTree,
  createProposal,
  decodeMlsMessage,
  defaultCapabilities,
  defaultExtensionTypes,
  defaultLifetime,
  emptyPskIndex,
  encodeMlsMessage,
  generateKeyPackage,
  generateKeyPackageWithKey,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  joinGroupExternal,
  mlsExporter,
  processMessage,
} from "ts-mls";
import { hex, serve, unhex } from "./protocol.mjs";

const impl = await getCiphersuiteImpl(
  getCiphersuiteFromName("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"),
);
const members = new Map();

function member(who) {
  let m = members.get(who);
  if (m === undefined) {
    m = { keyPackages: [], state: undefined };
    members.set(who, m);
  }
  return m;
}

function joined(who) {
  const m = member(who);
  if (m.state === undefined) throw new Error(`${who} is in no group`);
  return m;
}

function decode(text) {
  const decoded = decodeMlsMessage(unhex(text), 0);
  if (decoded === undefined) throw new Error("not an MLSMessage");
  return decoded[0];
}

const encode = (content) => hex(encodeMlsMessage({ version: "mls10", ...content }));

async function newKeyPackage(identity) {
  const credential = { credentialType: "basic", identity: unhex(identity) };
  return generateKeyPackage(credential, defaultCapabilities(), defaultLifetime, [], impl);
}

// A signature key pair made ahead of the key package, so a certificate can be issued for it.
const signatureKeys = new Map();

function leaves(state) {
  const out = [];
  state.ratchetTree.forEach((node, nodeIndex) => {
    if (nodeIndex % 2 === 0 && node !== undefined && node.nodeType === "leaf") {
      const credential = node.leaf.credential;
      const named = credential.credentialType === "x509" ? credential.certificates[0] : credential.identity;
      out.push({ leaf: nodeIndex / 2, identity: hex(named) });
    }
  });
  return out;
}

async function commit(who, proposals, publicMessage) {
  const m = joined(who);
  const result = await createCommit(
    { state: m.state, cipherSuite: impl, pskIndex: emptyPskIndex },
    { extraProposals: proposals, ratchetTreeExtension: true, wireAsPublicMessage: publicMessage },
  );
  m.state = result.newState;
  return {
    commit: hex(encodeMlsMessage(result.commit)),
    welcome: result.welcome === undefined ? null : encode({ wireformat: "mls_welcome", welcome: result.welcome }),
  };
}

serve({
  async key_package({ who, identity }) {
    const kp = await newKeyPackage(identity);
    member(who).keyPackages.push(kp);
    return { key_package: encode({ wireformat: "mls_key_package", keyPackage: kp.publicPackage }) };
  },

  async signature_key({ who }) {
    const pair = await impl.signature.keygen();
    signatureKeys.set(who, pair);
    return { public_key: hex(pair.publicKey) };
  },

  // A key package with an X.509 credential (DER chain, leaf first) for the key made above.
  async x509_key_package({ who, certificates }) {
    const pair = signatureKeys.get(who);
    if (pair === undefined) throw new Error("make the signature key first");
    const credential = { credentialType: "x509", certificates: certificates.map(unhex) };
    const kp = await generateKeyPackageWithKey(
      credential, defaultCapabilities(), defaultLifetime, [], pair, impl,
    );
    member(who).keyPackages.push(kp);
    return { key_package: encode({ wireformat: "mls_key_package", keyPackage: kp.publicPackage }) };
  },

  async create_group({ who, identity, group_id }) {
    const kp = await newKeyPackage(identity);
    member(who).state = await createGroup(unhex(group_id), kp.publicPackage, kp.privatePackage, [], impl);
    return {};
  },

  async join({ who, welcome }) {
    const m = member(who);
    const message = decode(welcome);
    if (message.wireformat !== "mls_welcome") throw new Error("not a Welcome");
    let lastError;
    for (const kp of m.keyPackages) {
      try {
        m.state = await joinGroup(message.welcome, kp.publicPackage, kp.privatePackage, emptyPskIndex, impl);
        m.keyPackages = m.keyPackages.filter((k) => k !== kp);
        return { group_id: hex(m.state.groupContext.groupId) };
      } catch (err) {
        lastError = err;
      }
    }
    throw lastError ?? new Error("no key package to join with");
  },

  async add({ who, key_packages, public_message = false }) {
    const proposals = key_packages.map((text) => {
      const message = decode(text);
      if (message.wireformat !== "mls_key_package") throw new Error("not a KeyPackage");
      return { proposalType: "add", add: { keyPackage: message.keyPackage } };
    });
    return commit(who, proposals, public_message);
  },

  async remove({ who, identities, public_message = false }) {
    const current = leaves(joined(who).state);
    const proposals = identities.map((identity) => {
      const found = current.find((l) => l.identity === identity);
      if (found === undefined) throw new Error("no such member");
      return { proposalType: "remove", remove: { removed: found.leaf } };
    });
    return commit(who, proposals, public_message);
  },

  async propose_remove({ who, identity, public_message = false }) {
    const m = joined(who);
    const found = leaves(m.state).find((l) => l.identity === identity);
    if (found === undefined) throw new Error("no such member");
    const proposal = { proposalType: "remove", remove: { removed: found.leaf } };
    const result = await createProposal(m.state, public_message, proposal, impl);
    m.state = result.newState;
    return { message: hex(encodeMlsMessage(result.message)) };
  },

  // A commit replacing the GroupContext extensions: [[type number, data hex], ...].
  async group_context_extensions({ who, extensions, public_message = false }) {
    const names = Object.fromEntries(Object.entries(defaultExtensionTypes).map(([n, v]) => [v, n]));
    const proposal = {
      proposalType: "group_context_extensions",
      groupContextExtensions: {
        extensions: extensions.map(([type, data]) => ({ extensionType: names[type] ?? type, extensionData: unhex(data) })),
      },
    };
    return commit(who, [proposal], public_message);
  },

  // A commit with no new proposals (it carries any received ones) always has an UpdatePath.
  async commit({ who, public_message = false }) {
    return commit(who, [], public_message);
  },

  // Commits the proposals received (and any of its own), with an UpdatePath.
  async commit_pending({ who, public_message = false }) {
    return commit(who, [], public_message);
  },

  async process({ who, message }) {
    const m = joined(who);
    const decoded = decode(message);
    if (decoded.wireformat !== "mls_public_message" && decoded.wireformat !== "mls_private_message") {
      throw new Error(`cannot process a ${decoded.wireformat}`);
    }
    const result = await processMessage(decoded, m.state, emptyPskIndex, acceptAll, impl);
    m.state = result.newState;
    if (result.kind === "applicationMessage") {
      return { kind: "application", data: hex(result.message) };
    }
    return { kind: "handshake", active: m.state.groupActiveState.kind === "active" };
  },

  async encrypt({ who, plaintext }) {
    const m = joined(who);
    const result = await createApplicationMessage(m.state, unhex(plaintext), impl);
    m.state = result.newState;
    return { message: encode({ wireformat: "mls_private_message", privateMessage: result.privateMessage }) };
  },

  async export_secret({ who, label, context, length }) {
    const m = joined(who);
    const secret = await mlsExporter(
      m.state.keySchedule.exporterSecret, Buffer.from(label, "hex").toString("latin1"),
      unhex(context), length, impl,
    );
    return { secret: hex(secret), label, context };
  },

  async members({ who }) {
    return { members: leaves(joined(who).state).map((l) => l.identity) };
  },

  async epoch({ who }) {
    return { epoch: Number(joined(who).state.groupContext.epoch) };
  },

  async group_info({ who }) {
    const groupInfo = await createGroupInfoWithExternalPubAndRatchetTree(joined(who).state, [], impl);
    return { group_info: encode({ wireformat: "mls_group_info", groupInfo }) };
  },

  async external_join({ who, identity, group_info }) {
    const message = decode(group_info);
    if (message.wireformat !== "mls_group_info") throw new Error("not a GroupInfo");
    const kp = await newKeyPackage(identity);
    const result = await joinGroupExternal(message.groupInfo, kp.publicPackage, kp.privatePackage, false, impl);
    member(who).state = result.newState;
    return { commit: encode({ wireformat: "mls_public_message", publicMessage: result.publicMessage }) };
  },
});
