// informer is an operator-shaped client of Gatehouse, built from client-go: a shared informer
// that lists and watches pods through the proxy asking for protobuf, as controllers do. It
// prints one JSON line when its cache has synced (the pods it holds) and one for each pod
// added after that whose name is given with -wait-for, then exits; non-zero on any failure.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig pointing at Gatehouse")
	namespace := flag.String("namespace", "", "namespace to watch")
	waitFor := flag.String("wait-for", "", "pod name whose addition ends the run")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long")
	flag.Parse()
	if err := run(*kubeconfig, *namespace, *waitFor, *timeout); err != nil {
		fmt.Fprintf(os.Stderr, "informer: %v\n", err)
		os.Exit(1)
	}
}

func emit(v any) {
	line, _ := json.Marshal(v)
	fmt.Println(string(line))
}

func run(kubeconfig, namespace, waitFor string, timeout time.Duration) error {
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	// As kube-controller-manager and most operators run: protobuf both ways.
	config.ContentType = "application/vnd.kubernetes.protobuf"
	config.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	config.UserAgent = "gatehouse-tests-informer"
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(namespace))
	pods := factory.Core().V1().Pods()
	added := make(chan string, 64)
	if _, err := pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if pod, ok := obj.(*corev1.Pod); ok {
				added <- pod.Name
			}
		},
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), pods.Informer().HasSynced) {
		return fmt.Errorf("the cache did not sync within %s", timeout)
	}
	listed, err := pods.Lister().Pods(namespace).List(labels.Everything())
	if err != nil {
		return err
	}
	names := make([]string, 0, len(listed))
	for _, pod := range listed {
		names = append(names, pod.Name)
	}
	sort.Strings(names)
	emit(map[string]any{"synced": names})
	if waitFor == "" {
		return nil
	}
	for {
		select {
		case name := <-added:
			if name == waitFor {
				emit(map[string]any{"added": name})
				return nil
			}
		case <-ctx.Done():
			return fmt.Errorf("no pod %q was added within %s", waitFor, timeout)
		}
	}
}
