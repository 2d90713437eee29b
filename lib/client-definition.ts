/**
 * The bundles' stand-in for @grpc/proto-loader in etcd3's connection pool
 * (build.ts puts `clientDefinition()` where etcd3 calls `loadSync()`): the
 * service definitions a gRPC client uses, each method's path, streaming
 * flags and name, with the same protobufjs serializer and deserializer
 * proto-loader makes. Left out is what only servers and reflection read:
 * every message's descriptor and the files' encoded descriptors, which
 * proto-loader builds for every method at load, with protobufjs's
 * descriptor extension; that was a third of `registry ls`'s start. build.ts
 * checks every method against proto-loader's own definition of it.
 *
 * @module
 */
import protobuf from "protobufjs";

/** What grpc-js's makeClientConstructor() reads of a method. */
export interface ClientMethod {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestSerialize(value: object): Uint8Array;
  responseDeserialize(bytes: Uint8Array): object;
  originalName: string;
}

/** Service name (`etcdserverpb.KV`) → method name (`Range`) → its definition. */
export type ClientDefinition = Record<string, Record<string, ClientMethod>>;

/** Every service in `json` (a protobufjs JSON descriptor), its answers converted with `options` (proto-loader's). */
export function clientDefinition(json: protobuf.INamespace, options: protobuf.IConversionOptions): ClientDefinition {
  const root = protobuf.Root.fromJSON(json);
  const definition: ClientDefinition = {};
  const visit = (namespace: protobuf.NamespaceBase, prefix: string) => {
    for (const nested of namespace.nestedArray) {
      const name = prefix ? `${prefix}.${nested.name}` : nested.name;
      if (nested instanceof protobuf.Service) definition[name] = serviceDefinition(nested, name, options);
      else if (nested instanceof protobuf.Namespace && !(nested instanceof protobuf.Type)) visit(nested, name);
    }
  };
  visit(root, "");
  return definition;
}

function serviceDefinition(service: protobuf.Service, name: string, options: protobuf.IConversionOptions) {
  const methods: Record<string, ClientMethod> = {};
  for (const method of service.methodsArray) {
    method.resolve(); // its request and response types; their fields resolve when first used
    const request = method.resolvedRequestType!;
    const response = method.resolvedResponseType!;
    methods[method.name] = {
      path: `/${name}/${method.name}`,
      requestStream: Boolean(method.requestStream),
      responseStream: Boolean(method.responseStream),
      requestSerialize(value) {
        if (Array.isArray(value)) {
          throw new Error(`Failed to serialize message: expected ${request.name}, got an array`);
        }
        return request.encode(request.fromObject(value)).finish();
      },
      responseDeserialize: (bytes) => response.toObject(response.decode(bytes), options),
      originalName: camelCase(method.name),
    };
  }
  return methods;
}

/** A method's name as proto-loader (lodash's camelCase) spells it: `LeaseKeepAlive` → `leaseKeepAlive`, `HashKV` → `hashKv`. */
export function camelCase(name: string): string {
  const words = name.match(/[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+/g) ?? [];
  return words.map((w, i) => i === 0 ? w.toLowerCase() : w[0].toUpperCase() + w.slice(1).toLowerCase()).join("");
}
