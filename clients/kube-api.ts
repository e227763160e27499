/**
 * The Kubernetes API clients of activities/kubernetes.ts, on @kubernetes/client-node. That library
 * costs a Node process about 130 MiB and two seconds to load (its generated models), so the worker
 * imports this module on the first Kubernetes activity (`loadKubeApi`), not at start.
 */
import {
  ApiException,
  AppsV1Api,
  BatchV1Api,
  CoreV1Api,
  HttpMethod,
  KubeConfig,
  KubernetesObjectApi,
  PatchStrategy,
  setHeaderOptions,
  VersionApi,
  type KubernetesObject,
  type ResponseContext,
} from '@kubernetes/client-node';

/** One object of a manifest, as YAML gives it. */
export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string } & Record<string, unknown>;
  [field: string]: unknown;
}

/** The options of a JSON merge patch (client-node sends strategic merge unless told). */
const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

/**
 * KubernetesObjectApi with plain-JSON answers and a true server-side apply. The stock patch()
 * serializes the body through client-node's typed models, which drop the fields they don't
 * know: a typo in a built-in kind would vanish instead of being rejected. apply() sends the
 * manifest as written (PATCH application/apply-patch+yaml, fieldValidation=Strict).
 */
export class DynamicApi extends KubernetesObjectApi {
  static forConfig(kc: KubeConfig): DynamicApi {
    const api = kc.makeApiClient(DynamicApi);
    api.setDefaultNamespace(kc);
    return api;
  }

  protected override async processResponse<T extends KubernetesObject>(response: ResponseContext): Promise<T> {
    const text = await response.body.text();
    let body: unknown = text;
    try {
      body = text ? JSON.parse(text) : {};
    } catch {
      // not JSON: keep the text
    }
    if (response.httpStatusCode >= 200 && response.httpStatusCode <= 299) return body as T;
    throw new ApiException(response.httpStatusCode, 'Unsuccessful HTTP Request', body, response.headers);
  }

  /** The API resource serving apiVersion/kind (namespaced or not); undefined when none does. */
  served(apiVersion: string, kind: string): ReturnType<KubernetesObjectApi['resource']> {
    return this.resource(apiVersion, kind);
  }

  get fallbackNamespace(): string {
    return this.defaultNamespace;
  }

  async apply(obj: KubeObject, fieldManager: string, force: boolean): Promise<KubeObject> {
    const uri = await this.specUriPath(obj, 'patch');
    const request = this.configuration.baseServer.makeRequestContext(uri, HttpMethod.PATCH);
    request.setHeaderParam('Accept', 'application/json');
    request.setHeaderParam('Content-Type', PatchStrategy.ServerSideApply);
    request.setQueryParam('fieldManager', fieldManager);
    request.setQueryParam('fieldValidation', 'Strict');
    if (force) request.setQueryParam('force', 'true');
    request.setBody(JSON.stringify(obj));
    return this.requestPromise<KubeObject>(request);
  }
}

/** The API clients of one kubeconfig, each made when first used. */
export class KubeClients {
  readonly mergePatch = mergePatch;

  constructor(readonly config: KubeConfig) {}

  get core(): CoreV1Api {
    return this.config.makeApiClient(CoreV1Api);
  }

  get batch(): BatchV1Api {
    return this.config.makeApiClient(BatchV1Api);
  }

  get apps(): AppsV1Api {
    return this.config.makeApiClient(AppsV1Api);
  }

  get version(): VersionApi {
    return this.config.makeApiClient(VersionApi);
  }

  get dynamic(): DynamicApi {
    return DynamicApi.forConfig(this.config);
  }
}

/** Clients for a kubeconfig's text; throws what KubeConfig.loadFromString throws. */
export function kubeClients(kubeconfig: string): KubeClients {
  const kc = new KubeConfig();
  kc.loadFromString(kubeconfig);
  return new KubeClients(kc);
}
