// A tfchain stand-in backed by our registrar: a Substrate JSON-RPC server
// (WebSocket) that answers exactly what @polkadot/api needs to connect and
// what @threefold/tfchain_client's twin queries read
// (TfgridModule.Twins and TfgridModule.TwinIdByAccountID), each storage
// read answered from GET /v1/accounts of the registrar. The published
// client is pointed at it through its chainUrl argument; nothing of the
// client is changed. Extrinsics are not supported: the test registers the
// client's twins with the public key and relay the client expects, so it
// never sends one.
"use strict";

const { TypeRegistry, Metadata } = require("@polkadot/types");
const { u8aToHex, hexToU8a, u8aConcat, compactToU8a, stringToU8a } = require("@polkadot/util");
const { xxhashAsU8a } = require("@polkadot/util-crypto");
const { WebSocketServer } = require("ws");

const T = { u8: 0, u32: 1, bytes32: 2, accountId: 3, vecU8: 4, optBytes: 5, twin: 6, runtime: 7 };

function metadataHex() {
  const registry = new TypeRegistry();
  const ty = (id, def, path = [], params = []) => ({ id, type: { path, params, def, docs: [] } });
  const types = [
    ty(T.u8, { Primitive: "U8" }),
    ty(T.u32, { Primitive: "U32" }),
    ty(T.bytes32, { Array: { len: 32, type: T.u8 } }),
    ty(T.accountId, { Composite: { fields: [{ name: null, type: T.bytes32, typeName: "[u8; 32]", docs: [] }] } }, ["sp_core", "crypto", "AccountId32"]),
    ty(T.vecU8, { Sequence: { type: T.u8 } }),
    ty(T.optBytes, {
      Variant: {
        variants: [
          { name: "None", fields: [], index: 0, docs: [] },
          { name: "Some", fields: [{ name: null, type: T.vecU8, typeName: null, docs: [] }], index: 1, docs: [] },
        ],
      },
    }, ["Option"], [{ name: "T", type: T.vecU8 }]),
    ty(T.twin, {
      Composite: {
        fields: [
          { name: "version", type: T.u32, typeName: "u32", docs: [] },
          { name: "id", type: T.u32, typeName: "u32", docs: [] },
          { name: "account_id", type: T.accountId, typeName: "AccountId", docs: [] },
          { name: "relay", type: T.optBytes, typeName: null, docs: [] },
          { name: "pk", type: T.optBytes, typeName: null, docs: [] },
        ],
      },
    }, ["tfchain_support", "types", "Twin"]),
    ty(T.runtime, { Composite: { fields: [] } }, ["tfchain_runtime", "Runtime"]),
  ];
  const map = (key, value) => ({ Map: { hashers: ["Blake2_128Concat"], key, value } });
  const md = new Metadata(registry, {
    magicNumber: 0x6174656d,
    metadata: {
      v14: {
        lookup: { types },
        pallets: [{
          name: "TfgridModule",
          storage: {
            prefix: "TfgridModule",
            items: [
              { name: "Twins", modifier: "Optional", type: map(T.u32, T.twin), fallback: "0x00", docs: [] },
              { name: "TwinIdByAccountID", modifier: "Optional", type: map(T.accountId, T.u32), fallback: "0x00", docs: [] },
            ],
          },
          calls: null, events: null, constants: [], errors: null, index: 11,
        }],
        extrinsic: { type: T.vecU8, version: 4, signedExtensions: [] },
        type: T.runtime,
      },
    },
  });
  return md.toHex();
}

const prefix = (item) => u8aToHex(u8aConcat(xxhashAsU8a("TfgridModule", 128), xxhashAsU8a(item, 128)));
const twinsPrefix = prefix("Twins");
const byAccountPrefix = prefix("TwinIdByAccountID");
const u32le = (n) => { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, n, true); return b; };
const optBytes = (b) => (b && b.length ? u8aConcat([1], compactToU8a(b.length), b) : new Uint8Array([0]));

// storage answers one storage key from the registrar: the SCALE encoding
// of the value, or null when the twin or key is not registered.
async function storage(registrar, key) {
  const get = async (query) => {
    const res = await fetch(`${registrar}/v1/accounts?${query}`);
    if (res.status === 404) return null;
    if (!res.ok) throw new Error(`registrar ${query}: ${res.status} ${await res.text()}`);
    return res.json();
  };
  // After the 32-byte prefix come the 16-byte Blake2_128 hash and the key.
  if (key.startsWith(twinsPrefix)) {
    const id = new DataView(hexToU8a("0x" + key.slice(2 + 64 + 32)).buffer).getUint32(0, true);
    const a = await get(`twin_id=${id}`);
    if (!a) return null;
    const pub = Buffer.from(a.public_key, "base64");
    const e2e = Buffer.from(a.rmb_enc_key || "", "base64");
    return u8aToHex(u8aConcat(u32le(1), u32le(a.twin_id), pub, optBytes(stringToU8a(a.relays.join("_"))), optBytes(e2e)));
  }
  if (key.startsWith(byAccountPrefix)) {
    const pub = Buffer.from(hexToU8a("0x" + key.slice(2 + 64 + 32)));
    const a = await get(`public_key=${encodeURIComponent(pub.toString("base64"))}`);
    return a ? u8aToHex(u32le(a.twin_id)) : null;
  }
  return null;
}

const HASH = "0x" + "11".repeat(32);
const ZERO = "0x" + "00".repeat(32);

// start listens on 127.0.0.1 and resolves to the ws:// URL.
function start(registrar) {
  const metadata = metadataHex();
  const methods = {
    rpc_methods: () => ({ version: 1, methods: Object.keys(methods) }),
    chain_getBlockHash: () => HASH,
    chain_getFinalizedHead: () => HASH,
    chain_getHeader: () => ({ parentHash: ZERO, number: "0x0", stateRoot: ZERO, extrinsicsRoot: ZERO, digest: { logs: [] } }),
    state_getRuntimeVersion: () => ({
      specName: "rmb-go-registrar", implName: "rmb-go-registrar", authoringVersion: 1, specVersion: 1,
      implVersion: 1, apis: [], transactionVersion: 1, stateVersion: 1,
    }),
    state_getMetadata: () => metadata,
    state_getStorage: (params) => storage(registrar, params[0]),
    state_queryStorageAt: async (params) => {
      const changes = [];
      for (const key of params[0]) changes.push([key, await storage(registrar, key)]);
      return [{ block: HASH, changes }];
    },
    system_chain: () => "rmb-go registrar",
    system_name: () => "rmb-go registrar",
    system_version: () => "1",
    system_properties: () => ({ ss58Format: 42, tokenDecimals: 7, tokenSymbol: "TFT" }),
    system_health: () => ({ peers: 0, isSyncing: false, shouldHavePeers: false }),
    state_subscribeRuntimeVersion: null,
    state_unsubscribeRuntimeVersion: () => true,
    chain_subscribeNewHeads: null,
    chain_unsubscribeNewHeads: () => true,
    chain_subscribeFinalizedHeads: null,
    chain_unsubscribeFinalizedHeads: () => true,
    state_subscribeStorage: null,
    state_unsubscribeStorage: () => true,
  };
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  let nextSub = 1;
  wss.on("connection", (ws) => {
    const send = (m) => ws.readyState === ws.OPEN && ws.send(JSON.stringify(m));
    ws.on("message", async (raw) => {
      let req;
      try { req = JSON.parse(raw); } catch { return; }
      const { id, method, params = [] } = req;
      try {
        if (method === "state_subscribeStorage") {
          const sub = String(nextSub++);
          send({ jsonrpc: "2.0", id, result: sub });
          const changes = [];
          for (const key of params[0]) changes.push([key, await storage(registrar, key)]);
          send({ jsonrpc: "2.0", method: "state_storage", params: { subscription: sub, result: { block: HASH, changes } } });
          return;
        }
        if (method === "state_subscribeRuntimeVersion") {
          const sub = String(nextSub++);
          send({ jsonrpc: "2.0", id, result: sub });
          send({ jsonrpc: "2.0", method: "state_runtimeVersion", params: { subscription: sub, result: methods.state_getRuntimeVersion() } });
          return;
        }
        if (method === "chain_subscribeNewHeads" || method === "chain_subscribeFinalizedHeads") {
          send({ jsonrpc: "2.0", id, result: String(nextSub++) });
          return;
        }
        const fn = methods[method];
        if (!fn) {
          send({ jsonrpc: "2.0", id, error: { code: -32601, message: `${method} is not served by the registrar stand-in` } });
          return;
        }
        send({ jsonrpc: "2.0", id, result: await fn(params) });
      } catch (err) {
        send({ jsonrpc: "2.0", id, error: { code: -32000, message: String(err && err.message || err) } });
      }
    });
  });
  return new Promise((resolve, reject) => {
    wss.on("listening", () => resolve({ url: `ws://127.0.0.1:${wss.address().port}`, close: () => wss.close() }));
    wss.on("error", reject);
  });
}

module.exports = { start };
